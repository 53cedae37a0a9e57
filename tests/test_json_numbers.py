"""jsonb turns a float such as ``1e20`` into the integer literal 100000000000000000000, which
``json`` would read back as an int that the response encoder (orjson) cannot write: every
path that reads jsonb decodes it the same way (crm_api.db.reader._loads), writes included."""

from __future__ import annotations

from factories.customers import create_customer


async def test_a_huge_number_in_custom_fields_reads_back_on_every_path(client, admin_user):
    customer = await create_customer(client, admin_user, custom_fields={"big": 1e20})
    url = f"/v1/customers/{customer['id']}"
    got = await client.get(url)
    assert got.status_code == 200, got.text
    assert got.json()["custom_fields"]["big"] == 1e20
    etag = {"If-Match": got.headers["ETag"]}
    patched = await client.patch(url, json={"notes": "n"}, headers=etag)
    assert patched.status_code == 200, patched.text  # the write path re-reads the jsonb
    assert patched.json()["custom_fields"]["big"] == 1e20
