"""Contacts end to end on a real PostgreSQL: scope through the customer, CRUD with
versions, the one-primary rule, nested routes, masking, idempotency and bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import count_rows, problem
from crm_api.authz.types import Access, Principal, PrincipalKind, Scope, ScopeKind
from crm_api.contact import repository
from crm_api.contact.schemas import ContactListQuery
from crm_api.kit.resource import get_row, mask_row
from crm_api.resources import CONTACTS
from factories.contacts import create_contact
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user


async def _owner(engine: AsyncEngine) -> dict:
    unit = await make_org_unit(engine)
    return await make_user(engine, org_unit=unit)


async def _events(client, **params: str) -> list[dict]:
    response = await client.get("/v1/audit-events", params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]


# --- scope: outsiders first ----------------------------------------------------------------
async def test_outsider_sees_nothing_of_other_reps_contacts(client, client_for, engine):
    unit = await make_org_unit(engine)
    rep = await make_user(engine, org_unit=unit)
    other = await make_user(engine, org_unit=unit)
    theirs = await create_customer(client, other, name="别人的客户")
    hidden = await create_contact(client, theirs, name="李雷", mobile="+86 139 0000 1234")
    as_rep = await client_for(rep)

    listed = await as_rep.get("/v1/contacts")
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert (await as_rep.get("/v1/contacts", params={"deleted": "true"})).json()["data"] == []
    problem(await as_rep.get(f"/v1/contacts/{hidden['id']}"), 404, "contact_not_found")
    problem(
        await as_rep.patch(f"/v1/contacts/{hidden['id']}", json={"title": "x"}),
        404,
        "contact_not_found",
    )
    problem(await as_rep.delete(f"/v1/contacts/{hidden['id']}"), 404, "contact_not_found")
    problem(await as_rep.get(f"/v1/customers/{theirs['id']}/contacts"), 404, "customer_not_found")
    before = await count_rows(engine, "contacts")
    # A customer named in the body is a bad reference (422), told apart from a customer
    # that does not exist by nothing at all; in the path it is a 404.
    out_of_scope, unknown = [
        problem(
            await as_rep.post("/v1/contacts", json={"customer_id": str(cid), "name": "x"}),
            422,
            "invalid_customer",
        )
        for cid in (theirs["id"], uuid.uuid4())
    ]
    assert out_of_scope["errors"] == [
        {
            "field": "customer_id",
            "code": "invalid_reference",
            "message": "no such customer in your scope",
        },
    ]
    for key in ("title", "detail", "errors"):
        assert out_of_scope[key] == unknown[key]
    problem(
        await as_rep.post(f"/v1/customers/{theirs['id']}/contacts", json={"name": "x"}),
        404,
        "customer_not_found",
    )
    assert await count_rows(engine, "contacts") == before
    # The rep's own customer's contacts are theirs, with the personal mobile masked
    # (sales_rep holds no read_sensitive on contacts).
    mine = await create_customer(client, rep, name="我的客户")
    own = await create_contact(client, mine, name="韩梅梅", mobile="+86 139 0000 5678")
    listed = (await as_rep.get("/v1/contacts")).json()["data"]
    assert [c["id"] for c in listed] == [own["id"]]
    assert listed[0]["mobile"] == "****5678"
    got = await as_rep.get(f"/v1/contacts/{own['id']}")
    assert got.json()["mobile"] == "****5678"
    assert (await client.get(f"/v1/contacts/{own['id']}")).json()["mobile"] == "+86 139 0000 5678"
    # No purge grant at all is a 403, not a 404.
    problem(await as_rep.post(f"/v1/contacts/{own['id']}/purge"), 403, "permission_denied")


async def test_scope_predicate_is_sql_over_the_customer(client, engine):
    """Repository level, with hand-made principals: an org-subtree reader sees contacts of
    customers in their subtree only, never those of a deleted customer."""
    root = await make_org_unit(engine, "Root", kind="company")
    east = await make_org_unit(engine, "East", parent=root)
    west = await make_org_unit(engine, "West", parent=root)
    east_rep = await make_user(engine, org_unit=east)
    west_rep = await make_user(engine, org_unit=west)
    east_customer = await create_customer(client, east_rep, name="East Co")
    west_customer = await create_customer(client, west_rep, name="West Co")
    gone_customer = await create_customer(client, east_rep, name="Gone Co")
    east_contact = await create_contact(client, east_customer, name="E")
    west_contact = await create_contact(client, west_customer, name="W")
    gone_contact = await create_contact(client, gone_customer, name="G")
    assert (await client.delete(f"/v1/customers/{gone_customer['id']}")).status_code == 204

    manager = Principal(
        kind=PrincipalKind.user,
        id=uuid.uuid4(),
        name="east manager",
        roles=frozenset(),
        org_unit_id=east["id"],
        org_path=east["path"],
    )
    access = Access(manager, "contacts", "read", Scope(frozenset({ScopeKind.org_subtree})))
    sql = str(repository.scoped(access).compile())
    assert "contacts.customer_id IN (SELECT customers.id" in sql
    async with engine.connect() as conn:
        page = await repository.list_page(conn, access, ContactListQuery())
        assert [r["id"] for r in page["data"]] == [uuid.UUID(east_contact["id"])]
        west_id = uuid.UUID(west_contact["id"])
        assert await get_row(conn, CONTACTS, access, repository.scoped(access), west_id) is None
        gone_id = uuid.UUID(gone_contact["id"])
        assert await get_row(conn, CONTACTS, access, repository.scoped(access), gone_id) is None
        # A principal missing what its scope needs matches nothing (fail closed).
        homeless = Principal(
            kind=PrincipalKind.user, id=uuid.uuid4(), name="nobody", roles=frozenset()
        )
        closed = Access(homeless, "contacts", "read", Scope(frozenset({ScopeKind.org_unit})))
        assert (await repository.list_page(conn, closed, ContactListQuery()))["data"] == []


async def test_mobile_shown_per_row_within_the_read_sensitive_scope(client, client_for, engine):
    """read_sensitive on contacts narrower than read (here org_subtree against all): each
    contact's mobile is shown exactly when its customer lies in the read_sensitive scope, in
    lists, single reads and the answers to writes alike."""
    root = await make_org_unit(engine, "Root", kind="company")
    east = await make_org_unit(engine, "East", parent=root)
    west = await make_org_unit(engine, "West", parent=root)
    manager = await make_user(engine, roles=("sales_manager", "service_agent"), org_unit=east)
    customers = {
        "east": await create_customer(client, await make_user(engine, org_unit=east)),
        "west": await create_customer(client, await make_user(engine, org_unit=west)),
    }
    as_manager = await client_for(manager)
    mobile = "+86 139 0000 5678"
    expected = {"east": mobile, "west": "****5678"}
    made = {}
    for name, customer in customers.items():
        response = await as_manager.post(
            "/v1/contacts", json={"customer_id": customer["id"], "name": name, "mobile": mobile}
        )
        assert response.status_code == 201, response.text
        made[name] = response.json()
    assert {n: c["mobile"] for n, c in made.items()} == expected
    listed = (await as_manager.get("/v1/contacts")).json()["data"]
    assert {c["name"]: c["mobile"] for c in listed} == expected
    for name, contact in made.items():
        url = f"/v1/contacts/{contact['id']}"
        assert (await as_manager.get(url)).json()["mobile"] == expected[name]
        nested = await as_manager.get(f"/v1/customers/{customers[name]['id']}/contacts")
        assert [c["mobile"] for c in nested.json()["data"]] == [expected[name]]
        patched = await as_manager.patch(url, json={"title": "采购经理"})
        assert patched.status_code == 200 and patched.json()["mobile"] == expected[name]
        unchanged = await as_manager.patch(url, json={"title": "采购经理"})
        assert unchanged.json()["mobile"] == expected[name]


def test_the_read_path_masks_mobile_without_read_sensitive():
    principal = Principal(kind=PrincipalKind.user, id=uuid.uuid4(), name="u", roles=frozenset())
    scope = Scope(frozenset({ScopeKind.all}))
    row = {"mobile": "+86 138 0013 8000", "phone": "+86 21 5555 0102"}
    masked = mask_row(CONTACTS, Access(principal, "contacts", "read", scope), dict(row))
    assert masked == {"mobile": "****8000", "phone": "+86 21 5555 0102"}
    shown = mask_row(CONTACTS, Access(principal, "contacts", "read", scope, True), dict(row))
    assert shown == row
    assert mask_row(CONTACTS, Access(principal, "contacts", "read", scope), {"mobile": None}) == {
        "mobile": None
    }


# --- CRUD ---------------------------------------------------------------------------------
async def test_create_get_update_delete_restore_purge(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    created = await client.post(
        "/v1/contacts",
        json={
            "customer_id": customer["id"],
            "name": "王芳",
            "title": "采购经理",
            "email": "Wang.Fang@MingYuan.Example.CN",
            "mobile": "+86 138 0013 8000",
        },
    )
    assert created.status_code == 201, created.text
    contact = created.json()
    cid = contact["id"]
    assert created.headers["location"] == f"/v1/contacts/{cid}"
    assert created.headers["etag"] == '"1"'
    assert contact["customer_id"] == customer["id"] and contact["version"] == 1
    assert contact["email"] == "Wang.Fang@mingyuan.example.cn"  # domain normalised
    assert contact["is_primary"] is False and contact["deleted_at"] is None

    got = await client.get(f"/v1/contacts/{cid}")
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    assert got.json() == contact

    patched = await client.patch(
        f"/v1/contacts/{cid}",
        json={"title": "采购总监", "notes": None},
        headers={"If-Match": '"1"'},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "采购总监" and patched.json()["version"] == 2
    assert patched.headers["etag"] == '"2"'
    # Nothing actually different: no new version, no event.
    same = await client.patch(f"/v1/contacts/{cid}", json={"title": "采购总监"})
    assert same.json()["version"] == 2
    problem(
        await client.patch(f"/v1/contacts/{cid}", json={"title": "x"}, headers={"If-Match": '"1"'}),
        412,
        "version_mismatch",
    )
    problem(await client.patch(f"/v1/contacts/{cid}", json={"name": None}), 422, "validation_error")
    problem(
        await client.delete(f"/v1/contacts/{cid}", headers={"If-Match": '"1"'}),
        412,
        "version_mismatch",
    )
    assert (await client.get(f"/v1/contacts/{cid}")).json()["title"] == "采购总监"

    problem(await client.post(f"/v1/contacts/{cid}/purge"), 404, "contact_not_found")
    problem(await client.post(f"/v1/contacts/{cid}/restore"), 404, "contact_not_found")
    deleted = await client.delete(f"/v1/contacts/{cid}", headers={"If-Match": '"2"'})
    assert deleted.status_code == 204
    problem(await client.get(f"/v1/contacts/{cid}"), 404, "contact_not_found")
    assert (await client.get("/v1/contacts")).json()["data"] == []
    trash = (await client.get("/v1/contacts", params={"deleted": "true"})).json()["data"]
    assert [c["id"] for c in trash] == [cid] and trash[0]["deleted_at"] is not None

    restored = await client.post(f"/v1/contacts/{cid}/restore")
    assert restored.status_code == 200, restored.text
    assert restored.json()["deleted_at"] is None and restored.json()["version"] == 4
    assert restored.headers["etag"] == '"4"'

    assert (await client.delete(f"/v1/contacts/{cid}")).status_code == 204
    assert (await client.post(f"/v1/contacts/{cid}/purge")).status_code == 204
    assert await count_rows(engine, "contacts") == 0
    problem(await client.post(f"/v1/contacts/{cid}/restore"), 404, "contact_not_found")

    events = await _events(client, resource_id=cid)
    assert [e["action"] for e in reversed(events)] == [
        "create",
        "update",
        "delete",
        "restore",
        "delete",
        "purge",
    ]
    assert {e["owner_id"] for e in events} == {str(owner["id"])}
    assert {e["org_unit_id"] for e in events} == {str(owner["org_unit_id"])}
    create_event = events[-1]
    assert create_event["changes"]["mobile"] == {"before": None, "after": "***"}
    assert create_event["changes"]["name"] == {"before": None, "after": "王芳"}
    update_event = events[-2]
    assert update_event["changes"] == {"title": {"before": "采购经理", "after": "采购总监"}}


async def test_contacts_of_a_deleted_customer_disappear_with_it(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    contact = await create_contact(client, customer)
    assert (await client.delete(f"/v1/customers/{customer['id']}")).status_code == 204
    problem(await client.get(f"/v1/contacts/{contact['id']}"), 404, "contact_not_found")
    assert (await client.get("/v1/contacts")).json()["data"] == []
    problem(
        await client.post("/v1/contacts", json={"customer_id": customer["id"], "name": "x"}),
        422,
        "invalid_customer",
    )
    problem(
        await client.post(f"/v1/customers/{customer['id']}/contacts", json={"name": "x"}),
        404,
        "customer_not_found",
    )
    assert (await client.post(f"/v1/customers/{customer['id']}/restore")).status_code == 200
    assert (await client.get(f"/v1/contacts/{contact['id']}")).status_code == 200


# --- the one primary contact ---------------------------------------------------------------
async def test_primary_is_unique_and_demotes_the_previous(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    other_customer = await create_customer(client, owner, name="Other")
    first = await create_contact(client, customer, name="First", is_primary=True)
    elsewhere = await create_contact(client, other_customer, name="Elsewhere", is_primary=True)
    second = await create_contact(client, customer, name="Second", is_primary=True)

    async def primary_of(cust: dict) -> list[str]:
        listed = await client.get(
            f"/v1/customers/{cust['id']}/contacts", params={"is_primary": "true"}
        )
        return [c["id"] for c in listed.json()["data"]]

    assert await primary_of(customer) == [second["id"]]
    assert await primary_of(other_customer) == [elsewhere["id"]]
    demoted = (await client.get(f"/v1/contacts/{first['id']}")).json()
    assert demoted["is_primary"] is False and demoted["version"] == 2
    events = await _events(client, resource_id=first["id"], action="update")
    assert [e["changes"] for e in events] == [{"is_primary": {"before": True, "after": False}}]
    assert events[0]["owner_id"] == str(owner["id"])

    # Promote through PATCH: the previous primary is demoted in the same transaction.
    promoted = await client.patch(
        f"/v1/contacts/{first['id']}", json={"is_primary": True}, headers={"If-Match": '"2"'}
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["is_primary"] is True and promoted.json()["version"] == 3
    assert await primary_of(customer) == [first["id"]]
    assert (await client.get(f"/v1/contacts/{second['id']}")).json()["is_primary"] is False

    # A deleted primary keeps its flag in the trash; restored while another is primary,
    # it comes back as a plain contact.
    assert (await client.delete(f"/v1/contacts/{first['id']}")).status_code == 204
    assert await primary_of(customer) == []
    await client.patch(f"/v1/contacts/{second['id']}", json={"is_primary": True})
    restored = (await client.post(f"/v1/contacts/{first['id']}/restore")).json()
    assert restored["is_primary"] is False
    assert await primary_of(customer) == [second["id"]]
    restore_event = (await _events(client, resource_id=first["id"], action="restore"))[0]
    assert restore_event["changes"]["is_primary"] == {"before": True, "after": False}
    # Restored with no other primary, it stays primary.
    await client.delete(f"/v1/contacts/{second['id']}")
    await client.patch(f"/v1/contacts/{first['id']}", json={"is_primary": True})
    await client.delete(f"/v1/contacts/{first['id']}")
    assert (await client.post(f"/v1/contacts/{first['id']}/restore")).json()["is_primary"] is True
    assert (
        await count_rows(engine, "contacts", "is_primary AND deleted_at IS NULL") == 2
    )  # one per customer


# --- nested routes -------------------------------------------------------------------------
async def test_customer_contacts_routes(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    other = await create_customer(client, owner, name="Other")
    await create_contact(client, other, name="Not mine")
    created = await client.post(
        f"/v1/customers/{customer['id']}/contacts", json={"name": "张伟", "is_primary": True}
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/v1/contacts/{created.json()['id']}"
    assert created.json()["customer_id"] == customer["id"]
    listed = await client.get(f"/v1/customers/{customer['id']}/contacts")
    assert listed.status_code == 200
    assert [c["name"] for c in listed.json()["data"]] == ["张伟"]
    # The customer comes from the path only.
    before = await count_rows(engine, "contacts")
    problem(
        await client.post(
            f"/v1/customers/{customer['id']}/contacts",
            json={"name": "x", "customer_id": other["id"]},
        ),
        422,
        "validation_error",
    )
    missing = uuid.uuid4()
    problem(await client.get(f"/v1/customers/{missing}/contacts"), 404, "customer_not_found")
    problem(
        await client.post(f"/v1/customers/{missing}/contacts", json={"name": "x"}),
        404,
        "customer_not_found",
    )
    problem(
        await client.get(
            f"/v1/customers/{customer['id']}/contacts", params={"customer_id": missing}
        ),
        422,
        "validation_error",
    )
    assert await count_rows(engine, "contacts") == before


# --- lists ---------------------------------------------------------------------------------
async def test_list_filters_search_sort_and_pages(client, engine):
    owner = await _owner(engine)
    a = await create_customer(client, owner, name="A Co")
    b = await create_customer(client, owner, name="B Co")
    wang = await create_contact(
        client,
        a,
        name="王小明",
        email="xm.wang@a.example.cn",
        phone="+86 21 5555 0101",
        is_primary=True,
    )
    li = await create_contact(client, a, name="李雷", email="lei.li@a.example.cn")
    smith = await create_contact(client, b, name="John Smith", phone="+1 415 555 0199")

    async def names(**params: object) -> list[str]:
        response = await client.get("/v1/contacts", params=params)
        assert response.status_code == 200, response.text
        return [c["name"] for c in response.json()["data"]]

    assert await names(customer_id=a["id"], sort="name") == sorted(["王小明", "李雷"])
    assert await names(customer_id=[a["id"], b["id"]], sort="created_at") == [
        "王小明",
        "李雷",
        "John Smith",
    ]
    assert await names(email="lei.li@A.EXAMPLE.CN") == ["李雷"]
    assert await names(is_primary="true") == ["王小明"]
    assert await names(is_primary="false", sort="name") == ["John Smith", "李雷"]
    assert await names(q="小明") == ["王小明"]
    assert await names(q="SMITH") == ["John Smith"]
    assert await names(q="0199") == ["John Smith"]
    assert await names(q="a.example") == ["李雷", "王小明"]  # default -created_at
    assert await names(q="100%") == []  # LIKE wildcards are literal
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert await names(created_after=soon) == []
    assert len(await names(created_before=soon, updated_before=soon)) == 3

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2, "sort": "-name"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/contacts", params=params)).json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert len(seen) == 3 and set(seen) == {wang["id"], li["id"], smith["id"]}
    counted = (await client.get("/v1/contacts", params={"include_total": "true"})).json()
    assert counted["total"] == 3

    problem(await client.get("/v1/contacts", params={"sort": "email"}), 422, "invalid_sort")
    problem(await client.get("/v1/contacts", params={"cursor": "nope"}), 400, "invalid_cursor")
    problem(await client.get("/v1/contacts", params={"limit": 500}), 422)
    problem(await client.get("/v1/contacts", params={"owner_id": owner["id"]}), 422)
    problem(await client.get("/v1/contacts", params={"email": "not-an-email"}), 422)


async def test_customer_search_still_matches_contact_names(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner, name="明远贸易")
    await create_customer(client, owner, name="Unrelated")
    await create_contact(client, customer, name="欧阳娜娜")
    found = (await client.get("/v1/customers", params={"q": "欧阳"})).json()["data"]
    assert [c["id"] for c in found] == [customer["id"]]


# --- idempotency ---------------------------------------------------------------------------
async def test_idempotent_create_replays(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    body = {"customer_id": customer["id"], "name": "王芳", "is_primary": True}
    headers = {"Idempotency-Key": "contact-create-1"}
    first = await client.post("/v1/contacts", json=body, headers=headers)
    again = await client.post("/v1/contacts", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    assert await count_rows(engine, "contacts") == 1
    problem(
        await client.post("/v1/contacts", json={**body, "name": "Other"}, headers=headers),
        422,
        "idempotency_key_reused",
    )
    nested = await client.post(
        f"/v1/customers/{customer['id']}/contacts",
        json={"name": "王芳"},
        headers={"Idempotency-Key": "contact-create-2"},
    )
    replay = await client.post(
        f"/v1/customers/{customer['id']}/contacts",
        json={"name": "王芳"},
        headers={"Idempotency-Key": "contact-create-2"},
    )
    assert replay.json()["id"] == nested.json()["id"]
    assert await count_rows(engine, "contacts") == 2
    assert await count_rows(engine, "audit_events", "resource_type = 'contacts'") == 2


# --- bad input -----------------------------------------------------------------------------
async def test_bad_input_is_refused_and_nothing_written(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    contact = await create_contact(client, customer, name="Keep")
    before = (await count_rows(engine, "contacts"), await count_rows(engine, "audit_events"))
    good = {"customer_id": customer["id"], "name": "x"}
    cases = [
        ({**good, "nickname": "x"}, 422, "validation_error"),
        ({**good, "id": str(uuid.uuid4())}, 422, "validation_error"),
        ({**good, "version": 7}, 422, "validation_error"),
        ({**good, "created_at": "2020-01-01T00:00:00Z"}, 422, "validation_error"),
        ({**good, "email": "not-an-email"}, 422, "validation_error"),
        ({**good, "mobile": "call me"}, 422, "validation_error"),
        ({**good, "name": ""}, 422, "validation_error"),
        ({**good, "name": "x" * 201}, 422, "validation_error"),
        ({**good, "is_primary": "sometimes"}, 422, "validation_error"),
        ({"name": "x"}, 422, "validation_error"),
        ({**good, "customer_id": "not-a-uuid"}, 422, "validation_error"),
        ({**good, "customer_id": str(uuid.uuid4())}, 422, "invalid_customer"),
        ([good], 422, "validation_error"),
    ]
    for body, status, code in cases:
        body_problem = problem(await client.post("/v1/contacts", json=body), status, code)
        if status == 422:
            assert body_problem["errors"], body
    unknown = problem(
        await client.post("/v1/contacts", json={**good, "nickname": "x"}), 422, "validation_error"
    )
    assert unknown["errors"][0] == {
        "field": "nickname",
        "code": "unknown_field",
        "message": "Extra inputs are not permitted",
    }
    malformed = await client.post(
        "/v1/contacts", content=b'{"name": "x",', headers={"Content-Type": "application/json"}
    )
    problem(malformed, 400, "malformed_json")
    cid = contact["id"]
    for patch in (
        {"customer_id": str(uuid.uuid4())},
        {"email": "nope"},
        {"is_primary": None},
        {"name": None},
        {"version": 3},
    ):
        problem(await client.patch(f"/v1/contacts/{cid}", json=patch), 422)
    problem(
        await client.patch(
            f"/v1/contacts/{cid}", content=b"{", headers={"Content-Type": "application/json"}
        ),
        400,
        "malformed_json",
    )
    problem(await client.get("/v1/contacts/not-a-uuid"), 422)
    problem(await client.patch(f"/v1/contacts/{uuid.uuid4()}", json={"title": "x"}), 404)
    after = (await count_rows(engine, "contacts"), await count_rows(engine, "audit_events"))
    assert after == before
    assert (await client.get(f"/v1/contacts/{cid}")).json()["version"] == 1


async def test_concurrent_promotions_leave_exactly_one_primary(client, engine):
    """Many requests making a contact of one customer primary at once: each succeeds, and
    the customer's row lock serialises them, so exactly one primary is left."""
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    existing = [await create_contact(client, customer, name=f"E{i}") for i in range(3)]
    creates = [
        client.post(
            "/v1/contacts",
            json={"customer_id": customer["id"], "name": f"N{i}", "is_primary": True},
        )
        for i in range(4)
    ]
    promotions = [
        client.patch(f"/v1/contacts/{c['id']}", json={"is_primary": True}) for c in existing
    ]
    responses = await asyncio.gather(*creates, *promotions)
    assert [r.status_code for r in responses] == [201] * 4 + [200] * 3, [r.text for r in responses]
    assert (
        await count_rows(engine, "contacts", f"customer_id = '{customer['id']}' AND is_primary")
        == 1
    )
    # Every promotion but the first demoted someone, and each demotion was audited.
    demotions = await count_rows(
        engine,
        "audit_events",
        "action = 'update' AND changes = "
        '\'{"is_primary": {"after": false, "before": true}}\'::jsonb',
    )
    assert demotions == 6
