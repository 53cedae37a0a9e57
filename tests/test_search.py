"""``q`` on customers and contacts over the generated search columns (migration 0003):
substring matching in any script, any letter case, wildcards literal, live rows only, the
same rows as one ILIKE per field; and the columns stay internal (never shown, audited or
writable)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from conftest import problem
from factories.contacts import create_contact
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user

US = "\x1f"  # the search columns' field separator


async def _owner(engine) -> dict[str, Any]:
    return await make_user(engine, org_unit=await make_org_unit(engine))


async def _customer_names(client, q: str, **params: Any) -> list[str]:
    response = await client.get("/v1/customers", params={"q": q, "limit": 200, **params})
    assert response.status_code == 200, response.text
    return sorted(c["name"] for c in response.json()["data"])


async def _contact_names(client, q: str, **params: Any) -> list[str]:
    response = await client.get("/v1/contacts", params={"q": q, "limit": 200, **params})
    assert response.status_code == 200, response.text
    return sorted(c["name"] for c in response.json()["data"])


async def test_outsider_finds_nothing(client, client_for, engine):
    owner, rep = await _owner(engine), await _owner(engine)
    theirs = await create_customer(client, owner, name="华信科技")
    await create_contact(client, theirs, name="欧阳娜娜", email="nana@huaxin.example.cn")
    as_rep = await client_for(rep)
    for q in ("华信", "欧阳", "huaxin"):
        assert await _customer_names(as_rep, q) == []
        assert await _contact_names(as_rep, q) == []


async def test_customers_by_any_script_and_case(client, engine):
    owner = await _owner(engine)
    for name, email, phone in [
        ("华信科技有限公司", "info@huaxin.example.cn", "+86 21 5555 0101"),
        ("北京华信贸易", None, None),
        ("École Supérieure", "contact@es.example.fr", None),
        ("CAFÉ NOIR", None, "+33 1 4000 0002"),
        ("Müller GmbH", "INFO@MUELLER.example.de", None),
        ("Ελληνική Εταιρεία", None, None),
    ]:
        await create_customer(client, owner, name=name, email=email, phone=phone)
    names = lambda q: _customer_names(client, q)  # noqa: E731
    assert await names("华信") == ["北京华信贸易", "华信科技有限公司"]  # 2 characters
    assert await names("华信科") == ["华信科技有限公司"]  # 3 characters
    assert await names("信贸") == ["北京华信贸易"]
    assert await names("école") == await names("ÉCOLE") == ["École Supérieure"]
    assert await names("Supérieure") == await names("SUPÉRIEURE") == ["École Supérieure"]
    assert await names("café") == ["CAFÉ NOIR"]
    assert await names("MÜLLER") == await names("müller") == ["Müller GmbH"]
    assert await names("mueller.EXAMPLE") == ["Müller GmbH"]  # e-mail, any case
    assert await names("ελληνική") == ["Ελληνική Εταιρεία"]
    assert await names("5555 01") == ["华信科技有限公司"]  # phone fragment
    assert await names("4000") == ["CAFÉ NOIR"]
    assert await names("ecole") == []  # no accent folding: É is not E
    # a term spanning two fields matches neither (as one ILIKE per field did)
    assert await names("有限公司 info") == []
    assert await names("noir +33") == []


async def test_customers_by_a_live_contacts_name(client, engine):
    owner = await _owner(engine)
    acme = await create_customer(client, owner, name="Acme")
    globex = await create_customer(client, owner, name="Globex")
    initech = await create_customer(client, owner, name="Initech")
    await create_contact(
        client, acme, name="欧阳娜娜", email="nana@acme.example.com", phone="+86 21 5555 0303"
    )
    await create_contact(client, globex, name="Émile Zola")
    gone = await create_contact(client, initech, name="欧阳修")
    assert (await client.delete(f"/v1/contacts/{gone['id']}")).status_code == 204

    assert await _customer_names(client, "欧阳") == ["Acme"]  # not via the deleted contact
    assert await _customer_names(client, "émile") == ["Globex"]
    assert await _customer_names(client, "ZOLA") == ["Globex"]
    # a contact's e-mail and phone are not what a customer's q searches: its name only
    assert await _customer_names(client, "nana@") == []
    assert await _customer_names(client, "5555 0303") == []
    # nor is the contact found twice, nor a deleted customer through its contact
    await create_contact(client, acme, name="欧阳锋")
    assert await _customer_names(client, "欧阳") == ["Acme"]
    assert (await client.delete(f"/v1/customers/{acme['id']}")).status_code == 204
    assert await _customer_names(client, "欧阳") == []
    assert await _customer_names(client, "欧阳", deleted=True) == ["Acme"]


async def test_deleted_customers_match_only_in_the_trash(client, engine):
    owner = await _owner(engine)
    kept = await create_customer(client, owner, name="华信一号")
    dropped = await create_customer(client, owner, name="华信二号")
    assert (await client.delete(f"/v1/customers/{dropped['id']}")).status_code == 204
    assert await _customer_names(client, "华信") == [kept["name"]]
    assert await _customer_names(client, "华信", deleted=True) == [dropped["name"]]


async def test_like_wildcards_and_backslash_are_literal(client, engine):
    owner = await _owner(engine)
    for name in (
        "100% Cotton",
        "100 Percent",
        "a_b Trading",
        "axb Trading",
        "C:\\Temp Ltd",
        "C:Temp Ltd",
    ):
        await create_customer(client, owner, name=name)
    assert await _customer_names(client, "100%") == ["100% Cotton"]
    assert await _customer_names(client, "%") == ["100% Cotton"]
    assert await _customer_names(client, "a_b") == ["a_b Trading"]
    assert await _customer_names(client, "_") == ["a_b Trading"]
    assert await _customer_names(client, "\\") == ["C:\\Temp Ltd"]
    assert await _customer_names(client, ":\\t") == ["C:\\Temp Ltd"]


async def test_search_follows_updates(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner, name="旧名字公司", email="old@a.example")
    contact = await create_contact(client, customer, name="张三", email="zs@a.example")
    url = f"/v1/customers/{customer['id']}"
    patched = await client.patch(
        url, json={"name": "新名字集团", "email": "NEW@b.example"}, headers={"If-Match": '"1"'}
    )
    assert patched.status_code == 200, patched.text
    assert await _customer_names(client, "旧名字") == []
    assert await _customer_names(client, "old@") == []
    assert await _customer_names(client, "新名字") == ["新名字集团"]
    assert await _customer_names(client, "new@B.EXAMPLE") == ["新名字集团"]
    # clearing a field clears it from the search too
    assert (await client.patch(url, json={"email": None})).status_code == 200
    assert await _customer_names(client, "b.example") == []

    curl = f"/v1/contacts/{contact['id']}"
    assert (
        await client.patch(
            curl, json={"name": "李四", "phone": "+86 10 8888 0001"}, headers={"If-Match": '"1"'}
        )
    ).status_code == 200
    assert await _customer_names(client, "张三") == []
    assert await _customer_names(client, "李四") == ["新名字集团"]
    assert await _contact_names(client, "张三") == []
    assert await _contact_names(client, "8888 0001") == ["李四"]
    # a restored contact is found again
    assert (await client.delete(curl)).status_code == 204
    assert await _customer_names(client, "李四") == []
    assert (await client.post(f"{curl}/restore")).status_code == 200
    assert await _customer_names(client, "李四") == ["新名字集团"]


async def test_contacts_q(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner)
    await create_contact(
        client,
        customer,
        name="欧阳娜娜",
        email="Nana.OuYang@acme.example",
        phone="+86 21 5555 0101",
        mobile="+86 139 1234 5678",
    )
    await create_contact(client, customer, name="Émile Zola", email="emile@zola.example")
    await create_contact(client, customer, name="50% Off_Deals")
    gone = await create_contact(client, customer, name="欧阳修")
    assert (await client.delete(f"/v1/contacts/{gone['id']}")).status_code == 204

    assert await _contact_names(client, "欧阳") == ["欧阳娜娜"]
    assert await _contact_names(client, "欧阳", deleted=True) == ["欧阳修"]
    assert await _contact_names(client, "欧阳娜") == ["欧阳娜娜"]
    assert (
        await _contact_names(client, "ÉMILE")
        == await _contact_names(client, "émile")
        == ["Émile Zola"]
    )
    assert await _contact_names(client, "ouyang@ACME") == ["欧阳娜娜"]  # e-mail, any case
    assert await _contact_names(client, "5555 0101") == ["欧阳娜娜"]  # work phone
    assert await _contact_names(client, "1234 5678") == []  # mobile (masked) is not searched
    assert await _contact_names(client, "%") == ["50% Off_Deals"]
    assert await _contact_names(client, "f_d") == ["50% Off_Deals"]
    assert await _contact_names(client, "zola 欧阳") == []
    nested = await client.get(f"/v1/customers/{customer['id']}/contacts", params={"q": "ZOLA"})
    assert [c["name"] for c in nested.json()["data"]] == ["Émile Zola"]


async def test_a_term_holding_the_field_separator(client, engine):
    """Nobody types U+001F, but a term holding it must neither match across two fields of
    a search column nor miss a field that holds it: such terms are matched field by field."""
    owner = await _owner(engine)
    customer = await create_customer(client, owner, name="Alpha", email="a@alpha.example")
    odd = await create_customer(client, owner, name=f"Odd{US}Name")
    await create_contact(client, customer, name="Beta", email="b@beta.example")
    await create_contact(client, odd, name=f"Con{US}Tact")
    assert await _customer_names(client, f"alpha{US}a@") == []
    assert await _customer_names(client, f"d{US}n") == [f"Odd{US}Name"]
    assert await _customer_names(client, f"n{US}t") == [f"Odd{US}Name"]  # via the contact
    assert await _contact_names(client, f"beta{US}b@") == []
    assert await _contact_names(client, f"N{US}T") == [f"Con{US}Tact"]


async def test_search_columns_stay_internal(client, engine):
    owner = await _owner(engine)
    customer = await create_customer(client, owner, name="内部列", email="x@in.example")
    contact = await create_contact(client, customer, name="内部联系人")
    curl, url = f"/v1/contacts/{contact['id']}", f"/v1/customers/{customer['id']}"
    for body in (
        customer,
        contact,
        (await client.get(url)).json(),
        (await client.get(curl)).json(),
        *(await client.get("/v1/customers", params={"q": "内部"})).json()["data"],
        *(await client.get("/v1/contacts", params={"q": "内部"})).json()["data"],
    ):
        assert not {"search_text", "search_name"} & body.keys(), body
    # not writable: unknown fields
    for method, target, body in [
        ("POST", "/v1/customers", {"name": "x", "owner_id": str(owner["id"]), "search_text": "y"}),
        ("PATCH", url, {"search_text": "y"}),
        ("POST", "/v1/contacts", {"customer_id": customer["id"], "name": "x", "search_name": "y"}),
        ("PATCH", curl, {"search_text": "y"}),
    ]:
        problem(await client.request(method, target, json=body), 422, "validation_error")
    # not audited: a change of name moves search_text, but the diff names the field only
    assert (await client.patch(url, json={"name": "改名"})).status_code == 200
    assert (await client.patch(curl, json={"name": "改名联系人"})).status_code == 200
    async with engine.connect() as conn:
        changes = (
            (
                await conn.execute(
                    text("SELECT changes FROM audit_events WHERE resource_id IN (:a, :b)"),
                    {"a": customer["id"], "b": contact["id"]},
                )
            )
            .scalars()
            .all()
        )
    assert len(changes) == 4
    for diff in changes:
        assert not {"search_text", "search_name"} & diff.keys(), diff
    # and the OpenAPI document knows nothing of them
    spec = await client.get("/openapi.json")
    assert spec.status_code == 200 and "/v1/customers" in spec.text
    assert "search_text" not in spec.text and "search_name" not in spec.text
