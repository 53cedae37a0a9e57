"""Typed settings. Nothing else in the codebase reads ``os.environ``.

Every setting can be given as an environment variable with the ``CRM_`` prefix or in a
``.env`` file. ``CRM_ENV=production`` refuses unsafe defaults (no database URL, a missing
or weak signing key, demo data, wildcard CORS).
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CRM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Environment = Environment.development
    host: str = "127.0.0.1"
    port: int = 8000
    #: PostgreSQL URL (``postgresql+asyncpg://…``). Unset: an embedded cluster in ``data_dir``.
    database_url: str | None = None
    #: Where the embedded PostgreSQL cluster and the generated signing key live.
    data_dir: Path = Path(".crm-data")
    #: Write connections (ORM sessions) per worker. Small pools are faster on a small box:
    #: every busy backend competes with the workers for the same cores (docs/benchmarks.md).
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    #: Connections per worker of the read pool (asyncpg, see ``crm_api.db.reader``).
    db_read_pool_size: int = Field(default=5, ge=1, le=200)
    #: How reads run: ``asyncpg`` (statements compiled by SQLAlchemy, run on an asyncpg pool;
    #: relies on private SQLAlchemy API, checked at start-up) or ``engine`` (the same
    #: statements through SQLAlchemy's AsyncEngine: public API only, slower). The fallback
    #: for when start-up says the installed SQLAlchemy broke the asyncpg path.
    read_path: Literal["asyncpg", "engine"] = "asyncpg"
    #: How long a request waits for a pooled connection (either pool) before 503. Short on
    #: purpose: a healthy request holds a connection for milliseconds, so a pool still full
    #: after this long means the database is hung or the worker is past its capacity, and
    #: the client (or the load balancer, via another worker) does better retrying than
    #: queueing (docs/operations.md, "Deadlines"). Not shorter: at 2 s a busy 2-core machine
    #: answered 503s to 50 concurrent order posts that 5 s serves (test_orders_uvicorn).
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    #: Opening a new connection (TCP, TLS, start-up and authentication) of either pool, and
    #: the liveness probe's connection: a server that accepts but never answers (a hung
    #: host, a dead proxy) costs a request this long, not asyncpg's 60 s. 5 s: under load
    #: (load average 9 on 2 cores) a healthy server took over 2 s to hand out a connection,
    #: and the liveness probe then judged it hung and cut live statements (503s).
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    #: A connection busy this long (a statement, COMMIT or the checkout ping without an
    #: answer) makes the worker ask whether the server still answers at all, on a fresh
    #: connection within ``db_connect_timeout_s``; if it does not, the busy connections are
    #: dropped (503 at once) instead of waiting for the statement deadline. A slow statement
    #: on a server that answers runs on, up to ``db_statement_timeout_ms``. Also the
    #: checkout ping's own deadline.
    db_liveness_timeout_s: float = Field(default=3.0, gt=0)
    db_pool_recycle_s: int = Field(default=1800, ge=-1)
    #: Ping a write connection when it leaves the pool (one round trip: see
    #: ``crm_api.db.engine.checkout_ping``); the engine read path keeps SQLAlchemy's
    #: pre-ping.
    db_pool_pre_ping: bool = True
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)
    db_lock_timeout_ms: int = Field(default=5_000, ge=0)
    #: ``max_parallel_workers_per_gather`` of the app's connections. 0: no parallel plans.
    #: A request's statement is short; a parallel plan starts worker processes for it (a
    #: branch manager's frequent-term search at 1,000,000 customers: Gather Merge with 2
    #: workers, 34 ms before the first row) and, with every worker's connections busy,
    #: only oversubscribes the cores the other requests need (docs/benchmarks.md).
    db_parallel_workers_per_gather: int = Field(default=0, ge=0, le=64)
    #: PostgreSQL's JIT for the app's connections (off: compiling costs tens of ms per
    #: statement whose estimated cost passes ``jit_above_cost``, which a short API
    #: statement never earns back).
    db_jit: bool = False
    db_echo: bool = False
    #: Load the demo data set (org tree, one user per role, customers) at start-up.
    demo_data: bool = False
    #: Requests with a larger body get 413 before the body is read.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_query_string_bytes: int = Field(default=4096, ge=256)
    #: The request line and headers together (``crm-api serve``'s protocol,
    #: ``crm_api.protocol``): a longer head gets 414/431 before it is read to the end.
    max_request_head_bytes: int = Field(default=32_768, ge=4096)
    #: Concurrent requests a worker serves; the rest get 503 quickly instead of piling up.
    max_concurrent_requests: int = Field(default=256, ge=1)
    log_level: str = "INFO"
    log_json: bool = True
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    require_if_match: bool = False
    #: ``include_total`` counts exactly up to this many matches; above it the total is the
    #: planner's estimate (``total_is_estimate``), so a count never scans a huge table.
    list_count_cap: int = Field(default=10_000, ge=1, le=10_000_000)

    # --- tokens (issue: identity and access) ---
    #: HS256: a random secret of ≥32 characters. RS256/ES256: a PEM private key. Unset
    #: outside production: generated once and kept in ``data_dir/jwt-signing.key``.
    jwt_signing_key: SecretStr | None = None
    jwt_algorithm: str = Field(default="HS256", pattern="^(HS256|HS384|HS512|RS256|ES256)$")
    #: Keys retired by a rotation, still accepted for verification (same algorithm).
    jwt_previous_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    jwt_issuer: str = "crm-api"
    jwt_audience: str = "crm-api"
    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_s: int = Field(default=30 * 86_400, ge=60)
    #: Failed logins to one account from one client IP before that pair is locked out.
    login_max_failures: int = Field(default=5, ge=1)
    #: The first lock-out (an account+IP pair's doubles with each lock-out after it).
    login_lockout_s: int = Field(default=300, ge=1)
    #: How often a worker re-reads policies and principals if no notification arrived.
    authz_poll_interval_s: float = Field(default=0.5, gt=0)

    # --- login throttling (docs/access-model.md, "Login throttling") ---
    #: Failures are counted per key over this window (from the key's first failure).
    login_window_s: int = Field(default=900, ge=1)
    #: Failed logins from one client IP, over every account, before the IP is locked out.
    login_ip_max_failures: int = Field(default=50, ge=1)
    #: Failed logins to one account from everywhere before the account is locked out: far
    #: above ``login_max_failures``, so one attacker cannot lock the owner out.
    login_account_max_failures: int = Field(default=100, ge=1)
    #: The longest lock-out of an account+IP pair (the doubling stops here).
    login_lockout_max_s: int = Field(default=86_400, ge=1)
    #: Password/secret verifications run at once per worker, in threads (~200 ms CPU each).
    password_hash_concurrency: int = Field(default=2, ge=1, le=64)
    #: How long a login waits for a verification slot before 503 ``login_busy``.
    password_hash_wait_s: float = Field(default=2.0, gt=0)
    #: Proxies (addresses or CIDRs, comma-separated) whose ``X-Forwarded-For`` is believed.
    #: Empty: the header is ignored and the socket peer is the client.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    # --- reliability and exposure (issue 7: hardening; docs/operations.md) ---
    #: Client-side deadline per statement, on top of ``db_statement_timeout_ms``: a server
    #: that stops answering (frozen host, dead proxy) fails the request with 503 after
    #: statement timeout + this margin instead of hanging. No deadline when the statement
    #: timeout is 0.
    db_command_timeout_margin_s: float = Field(default=2.0, gt=0)
    #: Pooled connections unused this long are closed (read pool: each connection; write
    #: pool: all idle ones once no write used the pool for this long), so idle workers
    #: give their slots of ``max_connections`` back.
    db_idle_timeout_s: float = Field(default=60.0, gt=0)
    #: ``/readyz`` waits at most this long for a fresh connection and one query.
    readiness_timeout_s: float = Field(default=2.0, gt=0)
    #: Requests one principal may have in flight per worker; more get 429 (0: no cap).
    max_inflight_per_principal: int = Field(default=8, ge=0)
    #: ``/metrics``: ``public``, ``token`` (``Authorization: Bearer <metrics_token>``) or
    #: ``off``. Default: public in development and test, token in production. The same
    #: token reveals the migration revision on ``/readyz`` in production. ``token`` without
    #: a token set refuses everyone (metrics off until one is configured).
    metrics: Literal["off", "token", "public"] | None = None
    metrics_token: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _split_cors(cls, data: object) -> object:
        if isinstance(data, dict):
            for name in ("cors_origins", "jwt_previous_keys"):
                value = data.get(name)
                if isinstance(value, str):
                    data[name] = [v.strip() for v in value.split(",") if v.strip()]
        return data

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env is not Environment.production:
            return self
        problems: list[str] = []
        if not self.database_url:
            problems.append("CRM_DATABASE_URL must point at a PostgreSQL server")
        key = self.jwt_signing_key.get_secret_value() if self.jwt_signing_key else ""
        if len(key) < 32 or "change" in key.lower() or len(set(key)) < 10:
            problems.append("CRM_JWT_SIGNING_KEY must be set to at least 32 random characters")
        if self.demo_data:
            problems.append("CRM_DEMO_DATA must be off")
        if "*" in self.cors_origins:
            problems.append("CRM_CORS_ORIGINS must not be '*'")
        if self.db_echo:
            problems.append("CRM_DB_ECHO must be off (it logs parameters)")
        if problems:
            raise ValueError("unsafe production settings: " + "; ".join(problems))
        return self

    @property
    def is_production(self) -> bool:
        return self.env is Environment.production

    @property
    def metrics_mode(self) -> Literal["off", "token", "public"]:
        if self.metrics is not None:
            return self.metrics
        return "token" if self.is_production else "public"

    @property
    def db_command_timeout_s(self) -> float | None:
        """The client-side deadline per statement (``None``: no statement timeout)."""
        if self.db_statement_timeout_ms <= 0:
            return None
        return self.db_statement_timeout_ms / 1000 + self.db_command_timeout_margin_s


@lru_cache
def get_settings() -> Settings:
    return Settings()
