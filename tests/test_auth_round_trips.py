"""Authentication and authorization add no database round trip to a request (issue 3):
the verified token, the principal and the Casbin decision are cached in the worker, and
the data scope travels inside the one statement the request needs anyway.

Counted at the two ways into the database: the read pool (``ReadPool.fetch``; with
``CRM_READ_PATH=engine``, the read engine's ``before_cursor_execute``) and the SQLAlchemy
engine (``before_cursor_execute``); the policy poller's own statements are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from crm_api.db.reader import EngineReadPool, ReadPool
from factories.customers import create_customer
from factories.identity import make_org_unit, make_user


@contextmanager
def counted(app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    statements: list[str] = []
    fetch = ReadPool.fetch

    async def counting_fetch(self: ReadPool, sql: str, args: Any) -> Any:
        statements.append(sql)
        return await fetch(self, sql, args)

    def on_execute(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        # the policy poller and the tokens' last-use flush run on their own schedule
        if "authz_state" not in sql and "SET last_used_at" not in sql:
            statements.append(sql)

    monkeypatch.setattr(ReadPool, "fetch", counting_fetch)
    engines = [app.state.db.engine.sync_engine]
    reads = app.state.db.reads
    if isinstance(reads, EngineReadPool):  # CRM_READ_PATH=engine: reads have an engine too
        engines.append(reads.engine.sync_engine)
    for sync_engine in engines:
        event.listen(sync_engine, "before_cursor_execute", on_execute)
    try:
        yield statements
    finally:
        for sync_engine in engines:
            event.remove(sync_engine, "before_cursor_execute", on_execute)
        monkeypatch.setattr(ReadPool, "fetch", fetch)


@pytest.mark.parametrize("role", ["admin", "sales_rep", "sales_manager"])
async def test_a_warm_request_runs_exactly_its_own_statement(
    app, engine, client, client_for, monkeypatch, role
):
    unit = await make_org_unit(engine)
    user = await make_user(engine, org_unit=unit, roles=(role,))
    customer = await create_customer(client, user)
    caller = await client_for(user)
    path = f"/v1/customers/{customer['id']}"
    # a policy reload pending from the setup would empty the principal cache mid-count
    await app.state.policy.refresh_if_changed(engine)
    assert (await caller.get(path)).status_code == 200  # warms the principal cache
    with counted(app, monkeypatch) as statements:
        for _ in range(3):
            assert (await caller.get(path)).status_code == 200
            assert (await caller.get("/v1/customers?limit=5")).status_code == 200
    # one statement per request: the scoped read (no count, no token or role lookup)
    assert len(statements) == 6, statements
    assert all("FROM customers" in s for s in statements), statements


async def test_a_cold_principal_costs_one_lookup_then_none(
    app, engine, client, client_for, monkeypatch
):
    unit = await make_org_unit(engine)
    user = await make_user(engine, org_unit=unit, roles=("sales_rep",))
    caller = await client_for(user)
    app.state.principals.clear()
    with counted(app, monkeypatch) as statements:
        assert (await caller.get("/v1/customers?limit=5")).status_code == 200
        cold = len(statements)
        assert (await caller.get("/v1/customers?limit=5")).status_code == 200
    assert cold == 2, statements  # the user's row, then the list
    assert len(statements) == 3, statements
