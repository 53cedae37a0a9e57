"""A worker starts whether or not its database answers.

Before it may serve the API a worker must hold what it reads from the database at start:
the access policy, the revoked sessions and the system settings. If PostgreSQL is down,
hung or refusing connections ("too many clients") when the worker starts, raising from
the lifespan would end the worker, and ``uvicorn --workers N`` stops every worker when
one fails to start. So the lifespan tries once and, on failure, keeps trying in the
background, with a backoff capped at :data:`MAX_DELAY_S`, while the worker serves:

* ``/healthz``: 200 (the process is up);
* ``/readyz``: 503 with ``Retry-After``, saying why (``crm_api.health``);
* every ``/v1`` request: 503 ``database_unavailable`` with ``Retry-After``, answered by
  :class:`~crm_api.middleware.RequestMiddleware` before any routing, authentication or
  database work. Default deny holds besides: the policy engine refuses to decide anything
  before its first load (``PolicyEngine._decide``).

Once everything is loaded the worker serves normally, with no restart. Shutdown while
still retrying cancels the retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

logger = logging.getLogger("crm_api")

#: The first retry's delay, doubled after each failure up to :data:`MAX_DELAY_S` (each
#: delay ±20 %, so that the workers of a deployment do not retry in lock step).
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0


class WarmUp:
    """Whether this worker has loaded what it needs from the database (``ready``), and
    if not, why (``last_error``, for ``/readyz``)."""

    def __init__(self) -> None:
        self.ready = False
        self.attempts = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, load: Callable[[], Awaitable[object]], on_ready: Callable[[], None]
    ) -> None:
        """Run ``load`` once now; if it fails, retry it in the background until it
        succeeds. ``on_ready`` runs once, right after the load that succeeded."""
        if await self._attempt(load):
            on_ready()
            return
        logger.warning(
            "database not available at start: serving 503 until it is (%s)", self.last_error
        )
        self._task = asyncio.get_running_loop().create_task(
            self._retry(load, on_ready), name="warm-up"
        )

    async def _attempt(self, load: Callable[[], Awaitable[object]]) -> bool:
        self.attempts += 1
        try:
            await load()
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            return False
        self.ready, self.last_error = True, None
        return True

    async def _retry(
        self, load: Callable[[], Awaitable[object]], on_ready: Callable[[], None]
    ) -> None:
        delay = FIRST_DELAY_S
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            if await self._attempt(load):
                logger.info("database available: serving (after %d attempts)", self.attempts)
                on_ready()
                return
            logger.info(
                "database still not available (attempt %d): %s", self.attempts, self.last_error
            )
            delay = min(delay * 2, MAX_DELAY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
