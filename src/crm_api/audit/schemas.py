"""The audit log as the API shows it: read-only events and their list filters."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import OutputModel
from crm_api.kit.types import UtcDatetime


class AuditEventSort(StrEnum):
    occurred_at = "occurred_at"


# Every registered resource (crm_api/resources.py) is listed: tests/test_contract.py checks.
# (The docstring below is the published description in OpenAPI, so it stays as it is.)
class AuditResource(StrEnum):
    """The resources whose changes are audited (each domain service's ``RESOURCE``); a
        filter on anything else is a 422, not a silently empty list. A new audited domain adds
        its name here (tests/test_contract.py checks every service's ``RESOURCE`` and every
    registered resource is listed)."""

    api_clients = "api_clients"
    contacts = "contacts"
    customers = "customers"
    orders = "orders"
    org_units = "org_units"
    personal_access_tokens = "personal_access_tokens"
    products = "products"
    roles = "roles"
    system_settings = "system_settings"
    users = "users"


class AuditEvent(OutputModel):
    """One mutation: who did what to which record, when, and under which request."""

    id: uuid.UUID
    occurred_at: datetime
    actor_type: str = Field(description="`user`, `api_client` or `system`.", examples=["user"])
    actor_id: uuid.UUID | None
    action: str = Field(
        description="What happened: `create`, `update`, `delete`, `restore`, `purge`, "
        "`transfer`, …",
        examples=["update"],
    )
    resource_type: str = Field(description="The resource, as in grants.", examples=["contacts"])
    resource_id: uuid.UUID
    owner_id: uuid.UUID | None = Field(
        description="The record's owner at the time (scopes who may read the event)."
    )
    org_unit_id: uuid.UUID | None = Field(description="The record's org unit at the time.")
    changes: dict[str, Any] = Field(
        description='Field-level diff, `{field: {"before": …, "after": …}}`; sensitive '
        'values appear as `"***"`.',
        examples=[{"title": {"before": "采购经理", "after": "采购总监"}}],
    )
    request_id: str | None = Field(description="The request that made the change.")


Name40 = Annotated[str, Field(min_length=1, max_length=40)]


class AuditEventListQuery(ListQuery):
    sort: str = sort_field(AuditEventSort, "-occurred_at")
    resource_type: list[AuditResource] | None = Field(
        default=None,
        max_length=20,
        examples=[["contacts"]],
        description="Events of these resources (e.g. `customers`, `contacts`).",
    )
    resource_id: uuid.UUID | None = Field(default=None, description="The history of one record.")
    actor_id: uuid.UUID | None = Field(
        default=None, description="Everything one user or API client did."
    )
    action: list[Name40] | None = Field(default=None, max_length=20, examples=[["update"]])
    occurred_after: UtcDatetime | None = Field(default=None, description="Inclusive.")
    occurred_before: UtcDatetime | None = Field(default=None, description="Exclusive.")
