"""The built-in ``storefront`` role: an API client (client credentials) that may create
orders, upsert customers and read the orders and customers it created — and nothing else.
Its data scope, ``created_by_self``, is a SQL predicate on the creator column."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from conftest import _http_client, count_rows, problem
from crm_api.authz.catalog import ACTIONS, known_resources
from crm_api.authz.delegation import Position, covers
from crm_api.authz.state import settle
from crm_api.authz.types import Principal, PrincipalKind, Scope, ScopeKind
from factories.api_clients import bearer, client_access_token, create_api_client
from factories.identity import make_org_unit, make_user

#: What the role may do: exactly these (resource, action) pairs, all over created_by_self.
ALLOWED = {
    ("customers", "read"),
    ("customers", "create"),
    ("customers", "update"),
    ("orders", "read"),
    ("orders", "create"),
}


@pytest.fixture(autouse=True)
async def _settled(app, engine) -> AsyncIterator[None]:
    yield
    await settle()
    await app.state.policy.refresh_if_changed(engine)


async def _storefront(app, client, engine, unit=None):
    """A storefront API client made through the API, and an HTTP client holding its token."""
    unit = unit or await make_org_unit(engine, "Online shop")
    created = await create_api_client(
        client, name="Shop", roles=["storefront"], org_unit_id=str(unit["id"])
    )
    token = await client_access_token(client, created)
    await app.state.policy.load(engine)
    http = _http_client(app, bearer(token))
    return created, http


async def test_outsider_storefront_sees_no_one_elses_customers(app, client, engine):
    theirs = (await client.put("/v1/customers/by-external-ref/crm-1", json={"name": "CRM"})).json()
    _, shop = await _storefront(app, client, engine)
    async with shop:
        listed = await shop.get("/v1/customers")
        assert listed.status_code == 200 and listed.json()["data"] == []
        problem(await shop.get(f"/v1/customers/{theirs['id']}"), 404, "customer_not_found")
        problem(await shop.patch(f"/v1/customers/{theirs['id']}", json={"notes": "x"}), 404)
        searched = await shop.get("/v1/customers", params={"q": "CRM"})
        assert searched.json()["data"] == []
        found = await shop.get("/v1/customers", params={"external_ref": "crm-1"})
        assert found.json()["data"] == []
        # upserting its key: the 409 a POST of a taken external_ref gets, naming nothing
        body = problem(
            await shop.put("/v1/customers/by-external-ref/crm-1", json={"name": "mine?"}), 409
        )
        assert body["code"] == "customer_duplicate" and body.get("existing_id") is None
    assert (await client.get(f"/v1/customers/{theirs['id']}")).json()["version"] == 1


async def test_storefront_upserts_and_reads_back_what_it_created(app, client, engine):
    _, shop = await _storefront(app, client, engine)
    async with shop:
        made = await shop.put(
            "/v1/customers/by-external-ref/shop-1",
            json={"name": "李伟", "type": "individual", "email": "li.wei@example.cn"},
        )
        assert made.status_code == 201, made.text
        row = made.json()
        me = (await shop.get("/v1/me")).json()
        assert row["created_by"] == row["owner_id"] == me["id"]
        posted = await shop.post("/v1/customers", json={"name": "王芳", "source": "storefront"})
        assert posted.status_code == 201
        listed = await shop.get("/v1/customers")
        assert {c["id"] for c in listed.json()["data"]} == {row["id"], posted.json()["id"]}
        assert (await shop.get(f"/v1/customers/{row['id']}")).status_code == 200
        again = await shop.put("/v1/customers/by-external-ref/shop-1", json={"name": "李伟 Li"})
        assert again.status_code == 200 and again.json()["version"] == 2
        patched = await shop.patch(f"/v1/customers/{row['id']}", json={"notes": "VIP"})
        assert patched.status_code == 200
        # masked for it: it holds no read_sensitive
        secret = await shop.put(
            "/v1/customers/by-external-ref/shop-2",
            json={"name": "Z", "bank_account": "6222020200112233445"},
        )
        assert secret.json()["bank_account"] == "****3445"


async def test_a_customer_handed_to_a_rep_stays_the_storefronts(app, client, engine):
    """created_by_self follows the creator, not the owner: a manager hands the shop's
    customer to a rep, and the shop still finds (and updates) its buyer."""
    unit = await make_org_unit(engine, "Online shop")
    rep = await make_user(engine, roles=("sales_rep",), org_unit=unit)
    _, shop = await _storefront(app, client, engine, unit)
    async with shop:
        row = (await shop.put("/v1/customers/by-external-ref/b-1", json={"name": "B"})).json()
        moved = await client.post(
            f"/v1/customers/{row['id']}/transfer", json={"to_user_id": str(rep["id"])}
        )
        assert moved.status_code == 200 and moved.json()["owner_id"] == str(rep["id"])
        seen = await shop.get(f"/v1/customers/{row['id']}")
        assert seen.status_code == 200 and seen.json()["owner_id"] == str(rep["id"])
        updated = await shop.put("/v1/customers/by-external-ref/b-1", json={"name": "B2"})
        assert updated.status_code == 200 and updated.json()["owner_id"] == str(rep["id"])


async def test_everything_else_is_403(app, client, engine):
    _, shop = await _storefront(app, client, engine)
    async with shop:
        mine = (await shop.put("/v1/customers/by-external-ref/s-1", json={"name": "S"})).json()
        cid = mine["id"]
        for method, path, body in [
            ("DELETE", f"/v1/customers/{cid}", None),
            ("POST", f"/v1/customers/{cid}/restore", None),
            ("POST", f"/v1/customers/{cid}/purge", None),
            ("POST", f"/v1/customers/{cid}/transfer", {"to_user_id": str(uuid.uuid4())}),
            (
                "POST",
                "/v1/customers/transfer",
                {"from_user_id": str(uuid.uuid4()), "to_user_id": str(uuid.uuid4())},
            ),
            ("GET", "/v1/contacts", None),
            ("POST", "/v1/contacts", {"customer_id": cid, "name": "x"}),
            ("GET", "/v1/users", None),
            ("POST", "/v1/users", {"email": "x@example.cn", "display_name": "x"}),
            ("GET", "/v1/roles", None),
            ("POST", "/v1/roles", {"name": "shop_admin"}),
            ("GET", "/v1/org-units", None),
            ("GET", "/v1/api-clients", None),
            ("POST", "/v1/api-clients", {"name": "x", "roles": ["storefront"]}),
            ("GET", "/v1/audit-events", None),
            ("GET", "/v1/authz/explain?resource=customers&user_id=" + str(uuid.uuid4()), None),
        ]:
            response = await shop.request(method, path, json=body)
            problem(response, 403, "permission_denied")
        # assigning another owner needs assign, which it lacks
        problem(
            await shop.put(
                "/v1/customers/by-external-ref/s-2",
                json={"name": "S", "owner_id": mine["owner_id"], "org_unit_id": str(uuid.uuid4())},
            ),
            403,
            "assign_not_allowed",
        )
    assert await count_rows(engine, "customers") == 1


async def test_the_role_grants_exactly_its_list_on_every_mounted_resource(app, client, engine):
    """Policy-level: for every resource some route enforces (settings, products and orders
    among them once mounted) and every action, the storefront holds a scope only for the
    pairs it should, and that scope is created_by_self."""
    created, shop = await _storefront(app, client, engine)
    await shop.aclose()
    me = (await client.get(f"/v1/api-clients/{created['id']}")).json()
    principal = Principal(
        PrincipalKind.api_client, uuid.UUID(me["user_id"]), "Shop", frozenset({"storefront"})
    )
    policy = app.state.policy
    held = {}
    for resource in sorted(known_resources(app) | {"orders", "products", "settings", "*"}):
        for action in sorted(ACTIONS):
            scope = policy.scope_for(principal, resource, action)
            if scope is not None:
                held[(resource, action)] = scope
    assert set(held) == ALLOWED
    assert all(s.kinds == frozenset({ScopeKind.created_by_self}) for s in held.values())


async def test_explain_and_visibility_speak_created_by_self(app, client, engine):
    created, shop = await _storefront(app, client, engine)
    async with shop:
        row = (await shop.put("/v1/customers/by-external-ref/e-1", json={"name": "E"})).json()
    other = (await client.put("/v1/customers/by-external-ref/e-2", json={"name": "O"})).json()
    user_id = (await client.get(f"/v1/api-clients/{created['id']}")).json()["user_id"]
    for record, visible in ((row, True), (other, False)):
        explained = await client.get(
            "/v1/authz/explain",
            params={"user_id": user_id, "resource": "customers", "record_id": record["id"]},
        )
        assert explained.status_code == 200, explained.text
        answer = explained.json()
        assert answer["scope"]["kinds"] == ["created_by_self"]
        assert "created" in answer["scope"]["description"]
        assert answer["record"]["visible"] is visible
        assert answer["record"]["matched_scopes"] == (["created_by_self"] if visible else [])
    seen = (
        await client.get(
            "/v1/authz/visibility", params={"user_id": user_id, "resource": "customers"}
        )
    ).json()
    assert seen["visible_count"] == 1 and "created_by" in seen["predicate"]


# --- delegation ------------------------------------------------------------------------------


def _principal(**kw) -> Principal:
    return Principal(PrincipalKind.user, uuid.uuid4(), "u", frozenset(), **kw)


def test_created_by_self_is_conferred_only_by_itself_or_all():
    me = _principal(org_unit_id=uuid.uuid4(), org_path="/a/", manager_path="/m/")
    other = Position(uuid.uuid4(), "/m/x/", me.org_unit_id, "/a/")
    wanted = ScopeKind.created_by_self
    for kind in (ScopeKind.own, ScopeKind.subordinates, ScopeKind.org_unit, ScopeKind.org_subtree):
        held = Scope(frozenset({kind}))
        assert not covers(held, wanted, (), me), kind
        assert not covers(held, wanted, (), me, at=other), kind
    assert covers(Scope(frozenset({ScopeKind.all})), wanted, (), me, at=other)
    mine = Scope(frozenset({wanted}))
    assert covers(mine, wanted, (), me)  # by the ladder alone (a role's grants)
    assert not covers(mine, wanted, (), me, at=other)  # someone else's creations
    # and it covers nothing else
    for kind in (ScopeKind.own, ScopeKind.org_unit, ScopeKind.all):
        assert not covers(mine, kind, (), me), kind


async def test_a_manager_cannot_make_a_storefront_client(app, client, client_for, engine):
    """Nobody confers what they don't hold: a branch manager with every customers right
    over its subtree (and api_clients create, say) still lacks created_by_self on orders
    and customers, so the storefront role is not theirs to give."""
    unit = await make_org_unit(engine, "East")
    manager = await make_user(engine, roles=("sales_manager",), org_unit=unit)
    role = (await client.post("/v1/roles", json={"name": "client_admin"})).json()
    for action in ("read", "create"):
        granted = await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": "api_clients", "action": action, "scope": "org_subtree"},
        )
        assert granted.status_code == 201, granted.text
    assigned = await client.patch(
        f"/v1/users/{manager['id']}", json={"roles": ["sales_manager", "client_admin"]}
    )
    assert assigned.status_code == 200, assigned.text
    boss = await client_for(manager)
    refused = await boss.post(
        "/v1/api-clients",
        json={"name": "Shop", "roles": ["storefront"], "org_unit_id": str(unit["id"])},
    )
    body = problem(refused, 403, "role_not_grantable")
    assert body["refused"] == ["storefront"]
    assert await count_rows(engine, "api_clients") == 0


# --- created_by_self beyond the storefront ---------------------------------------------------


async def test_read_sensitive_over_created_by_self_unmasks_exactly_what_one_created(
    client, client_for, engine
):
    """The scope is one predicate everywhere: a role reading every customer but seeing
    sensitive fields only on those it created gets them unmasked on exactly those — in
    lists, single reads, write responses and the masked write-back rule — and on their
    contacts (scoped through the customer)."""
    role = (await client.post("/v1/roles", json={"name": "data_steward"})).json()
    for resource, action, scope in [
        ("customers", "read", "all"),
        ("customers", "create", "own"),
        ("customers", "update", "all"),
        ("customers", "read_sensitive", "created_by_self"),
        ("contacts", "read", "all"),
        ("contacts", "read_sensitive", "created_by_self"),
    ]:
        granted = await client.post(
            f"/v1/roles/{role['id']}/grants",
            json={"resource": resource, "action": action, "scope": scope},
        )
        assert granted.status_code == 201, granted.text
    steward = await client_for(await make_user(engine, roles=("data_steward",)))
    account = "6222020200112233445"
    mine = await steward.post("/v1/customers", json={"name": "Mine", "bank_account": account})
    assert mine.status_code == 201 and mine.json()["bank_account"] == account
    theirs = await client.post("/v1/customers", json={"name": "Theirs", "bank_account": account})
    mine_id, theirs_id = mine.json()["id"], theirs.json()["id"]
    for contact_of in (mine_id, theirs_id):
        made = await client.post(
            "/v1/contacts",
            json={"customer_id": contact_of, "name": "王芳", "mobile": "13800138000"},
        )
        assert made.status_code == 201
    listed = {c["id"]: c for c in (await steward.get("/v1/customers")).json()["data"]}
    assert listed[mine_id]["bank_account"] == account
    assert listed[theirs_id]["bank_account"] == "****3445"
    assert (await steward.get(f"/v1/customers/{theirs_id}")).json()["bank_account"] == "****3445"
    # write responses and the masked write-back rule judge by the creator too
    patched = await steward.patch(f"/v1/customers/{mine_id}", json={"notes": "x"})
    assert patched.json()["bank_account"] == account
    echoed = await steward.patch(
        f"/v1/customers/{theirs_id}", json={"notes": "y", "bank_account": "****3445"}
    )
    assert echoed.status_code == 200 and echoed.json()["bank_account"] == "****3445"
    problem(
        await steward.patch(f"/v1/customers/{mine_id}", json={"bank_account": "****3445"}),
        422,
        "masked_value",
    )
    contacts = (await steward.get("/v1/contacts")).json()["data"]
    shown = {c["customer_id"]: c["mobile"] for c in contacts}
    assert shown[mine_id] == "13800138000" and shown[theirs_id] == "****8000"
    real = await client.get(f"/v1/customers/{theirs_id}")
    assert real.json()["bank_account"] == account
