"""``python -m bench.auth_cost``: CPU that authentication + authorization add to a request.

What the ``require(resource, action)`` dependency does on every request, called directly:
the verified-token cache lookup, the principal resolution (cached per worker) and two
memoized Casbin decisions (the action and ``read_sensitive``), for the admin, branch
manager and sales rep of the bench database; and, for comparison, a full JWT verification
(what a token-cache miss costs). CPU time, best of 5 x 5,000. Needs ``bench generate``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import asyncpg

from bench import asyncpg_url, sqlalchemy_url
from bench.load import SCENARIOS, Runner


async def main(url: str) -> None:
    os.environ.update(
        CRM_DATABASE_URL=sqlalchemy_url(url),
        CRM_LOG_LEVEL="WARNING",
        CRM_JWT_SIGNING_KEY="bench-auth-" + uuid.uuid4().hex + uuid.uuid4().hex,
    )
    from crm_api.auth import tokens
    from crm_api.auth.dependencies import ACCESS_TYPES, _verify_cached
    from crm_api.authz.scope import contains
    from crm_api.authz.types import Access
    from crm_api.config import get_settings
    from crm_api.main import create_app

    get_settings.cache_clear()
    args = argparse.Namespace(
        database_url=url, client="python", token=None, sample=10, search_term="x"
    )
    runner = Runner(args)
    conn = await asyncpg.connect(asyncpg_url(url))
    app = create_app()
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, startup.get, events.put))
    await events.get()
    assert not lifespan.done()

    class _Server:
        signing_key = os.environ["CRM_JWT_SIGNING_KEY"]
        data_dir = get_settings().data_dir

    class _Request:
        def __init__(self, app: Any) -> None:
            self.app = app

    st, request = app.state, _Request(app)
    for name in ("list_admin", "list_manager", "list_rep"):
        scenario = next(s for s in SCENARIOS if s.name == name)
        login = await runner.load_login(conn, scenario.login)
        token = runner.mint_token(login, _Server())  # type: ignore[arg-type]

        async def auth(token: str = token) -> Access:
            claims = _verify_cached(request, token)  # type: ignore[arg-type]
            principal = await st.principals.resolve(claims)
            scope = st.policy.scope_for(principal, "customers", "read")
            sensitive = st.policy.scope_for(principal, "customers", "read_sensitive")
            return Access(
                principal,
                "customers",
                "read",
                scope,
                sensitive is not None and contains(sensitive, scope),
                sensitive,
            )

        for _ in range(1000):
            await auth()
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(5000):
                await auth()
            best = min(best, (time.process_time() - t0) / 5000 * 1e6)
        t0 = time.process_time()
        for _ in range(2000):
            tokens.verify(
                st.keyring,
                token,
                issuer=st.settings.jwt_issuer,
                audience=st.settings.jwt_audience,
                token_types=ACCESS_TYPES,
            )
        cold = (time.process_time() - t0) / 2000 * 1e6
        print(
            f"{name:13} auth + authz per request {best:5.1f} µs (cached token); "
            f"a full JWT verification {cold:5.1f} µs"
        )
    await conn.close()
    os._exit(0)  # the app's background tasks are not worth a clean shutdown here


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "CRM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/crm_bench"
        ),
    )
    asyncio.run(main(parser.parse_args().database_url))
