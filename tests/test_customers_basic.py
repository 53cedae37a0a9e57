from __future__ import annotations

from conftest import count_rows, problem
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user


async def test_create_get_update_delete_restore(client, engine):
    unit = await make_org_unit(engine)
    owner = await make_user(engine, org_unit=unit)
    created = await create_customer(client, owner, grade="A", tags=["vip", "华东"])
    assert created["org_unit_id"] == str(unit["id"])
    got = await client.get(f"/v1/customers/{created['id']}")
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    patched = await client.patch(
        f"/v1/customers/{created['id']}", json={"grade": "B"}, headers={"If-Match": '"1"'}
    )
    assert patched.status_code == 200 and patched.json()["version"] == 2
    stale = await client.patch(
        f"/v1/customers/{created['id']}", json={"grade": "C"}, headers={"If-Match": '"1"'}
    )
    problem(stale, 412, "version_mismatch")
    assert (await client.delete(f"/v1/customers/{created['id']}")).status_code == 204
    problem(await client.get(f"/v1/customers/{created['id']}"), 404, "customer_not_found")
    listed = (await client.get("/v1/customers")).json()
    assert listed["data"] == []
    restored = await client.post(f"/v1/customers/{created['id']}/restore")
    assert restored.status_code == 200
    assert await count_rows(engine, "audit_events", "resource_type = 'customers'") == 4
