"""Login throttling (issue 7, item 6): atomic counting per client, per account from one
client (with back-off) and per account (a much higher ceiling); password checks in threads
with bounded concurrency; stale rows deleted; X-Forwarded-For believed only from trusted
proxies. Time moves by a manual identity clock, never by sleeping."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from ipaddress import ip_network
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from conftest import count_rows, problem
from crm_api.auth import clock, passwords
from crm_api.auth.client_ip import client_key
from crm_api.auth.clock import ManualClock
from crm_api.auth.passwords import PasswordChecker, hash_password
from factories.identity import make_org_unit, make_user

PASSWORD = "correct-horse-42"
WRONG = "wrong-password-1"
ATTACKER, OWNER = "203.0.113.66", "198.51.100.7"


@pytest.fixture(autouse=True)
def _fresh_tables(engine) -> None:
    """Asking for ``engine`` makes conftest empty the tables before each test."""


@pytest.fixture
async def person(app, engine) -> dict[str, Any]:
    unit = await make_org_unit(engine, "Sales")
    user = await make_user(
        engine, roles=("sales_rep",), org_unit=unit, password_hash=hash_password(PASSWORD)
    )
    await app.state.policy.load(engine)
    return user


@pytest.fixture
def app_state(app) -> Iterator[Callable[[str, Any], None]]:
    """Replace ``app.state`` attributes for this test only (``monkeypatch`` cannot: its
    undo deletes them from a Starlette ``State``)."""
    saved: dict[str, Any] = {}

    def replace(name: str, value: Any) -> None:
        saved.setdefault(name, getattr(app.state, name))
        setattr(app.state, name, value)

    yield replace
    for name, value in saved.items():
        setattr(app.state, name, value)


@pytest.fixture
def tune(app, app_state) -> Callable[..., None]:
    """Change the running app's settings for this test only."""

    def apply(**fields: Any) -> None:
        app_state("settings", app.state.settings.model_copy(update=fields))

    return apply


@pytest.fixture
def checked(app, app_state, monkeypatch) -> list[int]:
    """The thread of every password check that really ran. Slots are plentiful and waits
    long, so a slow machine gets no 503s here (the 503 has its own test)."""
    idents: list[int] = []
    real = passwords.verify_password

    def counting(password_hash: str | None, password: str) -> bool:
        idents.append(threading.get_ident())
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "verify_password", counting)
    app_state("passwords", PasswordChecker(4, 120.0))
    return idents


@pytest.fixture
async def from_ip(app) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    opened: list[httpx.AsyncClient] = []

    def make(ip: str, **headers: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        http = httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)
        opened.append(http)
        return http

    yield make
    for http in opened:
        await http.aclose()


@contextmanager
def manual_clock() -> Iterator[ManualClock]:
    with clock.use(ManualClock(clock.now_us())) as manual:
        yield manual  # type: ignore[misc]


async def _login(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await http.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": username, "password": password},
    )


def _retry_after(response: httpx.Response) -> int:
    problem(response, 429, "too_many_attempts")
    return int(response.headers["retry-after"])


# --- counting -------------------------------------------------------------------------------


async def test_a_burst_gets_no_more_checks_than_the_limit(app, person, from_ip, checked):
    limit = app.state.settings.login_max_failures
    http = from_ip(ATTACKER)
    burst = await asyncio.gather(*(_login(http, person["email"], WRONG) for _ in range(20)))
    statuses = Counter(r.status_code for r in burst)
    assert statuses == {401: limit, 429: 20 - limit}, statuses
    assert len(checked) == limit
    assert all(int(r.headers["retry-after"]) > 0 for r in burst if r.status_code == 429)
    # Locked: the right password is refused without being checked.
    _retry_after(await _login(http, person["email"], PASSWORD))
    assert len(checked) == limit


async def test_a_third_party_cannot_lock_the_owner_out(app, tune, person, from_ip, checked):
    tune(login_max_failures=3, login_account_max_failures=8)
    attacker, owner = from_ip(ATTACKER), from_ip(OWNER)
    for _ in range(3):
        problem(await _login(attacker, person["email"], WRONG), 401)
    for _ in range(10):  # locked, and hammering on counts against nothing else
        _retry_after(await _login(attacker, person["email"], WRONG))
    assert (await _login(owner, person["email"], PASSWORD)).status_code == 200

    # Only guesses spread over many clients reach the account's own, much higher ceiling.
    for ip in ("203.0.113.67", "203.0.113.68"):
        for _ in range(3):
            response = await _login(from_ip(ip), person["email"], WRONG)
    assert response.status_code == 429  # the 9th failure of the account
    _retry_after(await _login(owner, person["email"], PASSWORD))


async def test_the_pair_lockout_doubles(app, tune, person, from_ip, checked):
    tune(login_max_failures=2, login_lockout_s=60, login_lockout_max_s=200)
    attacker, owner = from_ip(ATTACKER), from_ip(OWNER)
    with manual_clock() as manual:
        for expected in (60, 120, 200, 200):  # capped by login_lockout_max_s
            for _ in range(2):
                problem(await _login(attacker, person["email"], WRONG), 401)
            assert _retry_after(await _login(attacker, person["email"], WRONG)) == expected
            _retry_after(await _login(attacker, person["email"], WRONG))  # still locked
            manual.advance(expected)
        assert (await _login(owner, person["email"], PASSWORD)).status_code == 200
        # The owner's success from that client would reset the pair; the attacker's own
        # pair keeps its memory.
        for _ in range(2):
            problem(await _login(attacker, person["email"], WRONG), 401)
        assert _retry_after(await _login(attacker, person["email"], WRONG)) == 200


async def test_success_resets_the_pair_and_gives_the_attempt_back(
    app, engine, person, from_ip, checked
):
    http = from_ip(OWNER)
    problem(await _login(http, person["email"], WRONG), 401)
    assert (await _login(http, person["email"], PASSWORD)).status_code == 200
    rows = await count_rows(engine, "login_throttle", "key LIKE 'acct_ip:%'")
    assert rows == 0
    assert await count_rows(engine, "login_throttle", "key LIKE 'acct:%' AND failures = 1") == 1
    assert await count_rows(engine, "login_throttle", f"key = 'ip:{OWNER}' AND failures = 1") == 1


async def test_spraying_many_accounts_from_one_client_is_limited(
    app, tune, engine, from_ip, checked
):
    tune(login_ip_max_failures=4)
    http = from_ip(ATTACKER)
    for n in range(4):
        problem(await _login(http, f"ghost-{n}@example.com", WRONG), 401)
    _retry_after(await _login(http, "ghost-4@example.com", WRONG))
    assert len(checked) == 4
    # A client locked out creates no rows; the others hold no username.
    assert await count_rows(engine, "login_throttle") == 5  # its IP and four pairs
    assert await count_rows(engine, "login_throttle", "key LIKE '%ghost%'") == 0
    # Another client is not affected.
    problem(await _login(from_ip(OWNER), "ghost-4@example.com", WRONG), 401)


async def test_unknown_usernames_lock_like_accounts(app, from_ip, checked):
    """The lock-out tells nothing about which accounts exist."""
    limit = app.state.settings.login_max_failures
    http = from_ip(ATTACKER)
    for _ in range(limit):
        problem(await _login(http, "nobody@example.com", WRONG), 401)
    _retry_after(await _login(http, "nobody@example.com", WRONG))


async def test_stale_rows_are_deleted(app, tune, engine, person, from_ip, checked):
    tune(login_max_failures=1, login_window_s=60, login_lockout_s=60, login_lockout_max_s=600)
    with manual_clock() as manual:
        for n in range(3):
            problem(await _login(from_ip(ATTACKER), f"ghost-{n}@example.com", WRONG), 401)
        problem(await _login(from_ip(ATTACKER), person["email"], WRONG), 401)
        _retry_after(await _login(from_ip(ATTACKER), person["email"], WRONG))  # locked pair
        assert await count_rows(engine, "login_throttle") == 6
        manual.advance(61)
        problem(await _login(from_ip(OWNER), "someone@example.com", WRONG), 401)
        # Gone: the IP, the unknown pairs, the account. Kept: the locked pair, whose lock
        # count the back-off still needs, and the new attempt's rows.
        assert await count_rows(engine, "login_throttle", f"key LIKE '%{ATTACKER}'") == 1
        manual.advance(60 + 600)
        problem(await _login(from_ip(OWNER), "someone@example.com", WRONG), 401)
        assert await count_rows(engine, "login_throttle", f"key LIKE '%{ATTACKER}'") == 0


# --- password checks off the event loop -----------------------------------------------------


async def test_password_checks_run_in_threads_with_bounded_concurrency(
    app, app_state, engine, client, person, from_ip, monkeypatch
):
    app_state("passwords", PasswordChecker(1, 0.05))
    entered, release = threading.Event(), threading.Event()
    threads: list[int] = []
    real = passwords.verify_password

    def blocking(password_hash: str | None, password: str) -> bool:
        threads.append(threading.get_ident())
        entered.set()
        assert release.wait(30)
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "verify_password", blocking)
    slow = asyncio.create_task(_login(from_ip(ATTACKER), person["email"], WRONG))
    try:
        for _ in range(1000):  # until the check holds the only slot (bounded)
            if entered.is_set():
                break
            await asyncio.sleep(0.01)
        assert entered.is_set()
        # The loop is free while a password is checked: another request is answered...
        me = await asyncio.wait_for(client.get("/v1/me"), 30)
        assert me.status_code == 200
        # ...and a login that finds no free slot is told to come back, not queued forever.
        busy = await _login(from_ip(OWNER), "other@example.com", WRONG)
        problem(busy, 503, "login_busy")
        assert busy.headers["retry-after"] == "1"
        # An attempt that was never checked is no failure.
        assert await count_rows(engine, "login_throttle", f"key LIKE '%{OWNER}'") == 2
        assert (
            await count_rows(engine, "login_throttle", f"key LIKE '%{OWNER}' AND failures > 0") == 0
        )
    finally:
        release.set()
        response = await slow
    problem(response, 401, "invalid_grant")
    assert threads and threading.get_ident() not in threads


# --- the client's address -------------------------------------------------------------------


def _request(peer: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "client": (peer, 1234), "headers": headers})


PROXIES = [ip_network("10.0.0.0/8"), ip_network("2001:db8:1::/48")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("198.51.100.7", ["203.0.113.9"], [], "198.51.100.7"),  # no trusted proxies
        ("198.51.100.7", ["203.0.113.9"], PROXIES, "198.51.100.7"),  # peer not trusted
        ("10.0.0.2", ["203.0.113.9"], PROXIES, "203.0.113.9"),
        ("10.0.0.2", ["1.2.3.4, 203.0.113.9, 10.0.0.5"], PROXIES, "203.0.113.9"),
        ("10.0.0.2", ["1.2.3.4", "203.0.113.9"], PROXIES, "203.0.113.9"),  # two headers
        ("10.0.0.2", ["10.0.0.7, 10.0.0.5"], PROXIES, "10.0.0.7"),  # all hops trusted
        ("10.0.0.2", ["203.0.113.9, garbage"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", [], PROXIES, "10.0.0.2"),
        ("10.0.0.2", ["203.0.113.9:5555"], PROXIES, "203.0.113.9"),
        ("10.0.0.2", ["[2001:db8:9::1]:443"], PROXIES, "2001:db8:9::/64"),
        ("2001:db8:1::5", ["2001:db8:7:7::1"], PROXIES, "2001:db8:7:7::/64"),
        ("::ffff:198.51.100.7", [], PROXIES, "198.51.100.7"),
    ],
)
def test_client_key(peer, forwarded, trusted, expected):
    assert client_key(_request(peer, *forwarded), trusted) == expected


async def test_forwarded_for_is_ignored_unless_the_peer_is_trusted(
    app, tune, engine, from_ip, checked
):
    spoofed = {"X-Forwarded-For": "192.0.2.1"}
    problem(await _login(from_ip(ATTACKER, **spoofed), "a@example.com", WRONG), 401)
    assert await count_rows(engine, "login_throttle", f"key = 'ip:{ATTACKER}'") == 1
    assert await count_rows(engine, "login_throttle", "key LIKE '%192.0.2.1%'") == 0

    tune(trusted_proxies=[ip_network("10.0.0.0/8")])
    forwarded = {"X-Forwarded-For": "192.0.2.1, 203.0.113.200, 10.0.0.9"}
    problem(await _login(from_ip("10.0.0.2", **forwarded), "a@example.com", WRONG), 401)
    assert await count_rows(engine, "login_throttle", "key = 'ip:203.0.113.200'") == 1
    assert await count_rows(engine, "login_throttle", "key LIKE '%10.0.0.%'") == 0


async def test_client_secret_guesses_count_against_the_client(
    app, client, tune, engine, from_ip, checked
):
    """``client_credentials`` was not throttled at all: every guess cost an argon2 check,
    so a flood of wrong secrets from one address (no credentials needed) kept the
    password-check slots busy and real logins got 503 ``login_busy`` (measured against a
    uvicorn server: 2 of 6 logins during an 8-connection flood). A wrong secret now counts
    against the client's address like a wrong password: one budget per client."""
    from factories.api_clients import client_credentials

    tune(login_ip_max_failures=4)
    made = await client.post("/v1/api-clients", json={"name": "Shop", "roles": ["storefront"]})
    created = made.json()
    http = from_ip(ATTACKER)
    for n in range(2):
        problem(await client_credentials(http, created["client_id"], f"cs_wrong{n}"), 401)
        problem(await client_credentials(http, f"cli_unknown{n}", "cs_wrong"), 401)
    checks = len(checked)
    # locked: not even the right secret is checked
    _retry_after(await client_credentials(http, created["client_id"], created["client_secret"]))
    _retry_after(await _login(http, "anyone@example.com", WRONG))  # the same budget
    assert len(checked) == checks
    # another client is not affected, and a success gives its attempt back
    owner = from_ip(OWNER)
    for _ in range(6):
        ok = await client_credentials(owner, created["client_id"], created["client_secret"])
        assert ok.status_code == 200, ok.text
    assert await count_rows(engine, "login_throttle", f"key = 'ip:{OWNER}' AND failures > 0") == 0
