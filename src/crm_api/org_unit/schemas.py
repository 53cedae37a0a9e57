from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from crm_api.kit.pagination import ListQuery, sort_field
from crm_api.kit.schemas import InputModel, OutputModel
from crm_api.kit.types import SearchTerm


class OrgUnitKind(StrEnum):
    group = "group"
    company = "company"
    branch = "branch"
    office = "office"
    team = "team"
    department = "department"


class OrgUnitSort(StrEnum):
    path = "path"
    name = "name"
    created_at = "created_at"


Name = Annotated[str, Field(min_length=1, max_length=200, examples=["华东销售部 East Sales"])]


class OrgUnitCreate(InputModel):
    name: Name
    kind: OrgUnitKind
    parent_id: uuid.UUID | None = Field(
        default=None, description="The unit above; omit for a new root (needs scope `all`)."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "Team Pudong 浦东组",
                    "kind": "team",
                    "parent_id": "7d1c3a52-4f0e-4a57-9d2b-1a0c6b3e9f10",
                }
            ]
        }
    }


class OrgUnitUpdate(InputModel):
    """Rename or re-kind a unit. Moving it is ``POST …/move``."""

    name: Name | None = None
    kind: OrgUnitKind | None = None


class OrgUnitMove(InputModel):
    parent_id: uuid.UUID | None = Field(
        description="The new parent; null makes the unit a root. Not the unit itself or a "
        "unit below it (409 `invalid_move`)."
    )


class OrgUnit(OutputModel):
    id: uuid.UUID
    name: str
    kind: OrgUnitKind
    parent_id: uuid.UUID | None
    path: str = Field(
        description="`/<root id>/…/<own id>/`: the unit's ancestors, top first.",
        examples=["/7d1c3a52-4f0e-4a57-9d2b-1a0c6b3e9f10/1b9e0f4c-22aa-4d0e-b7c1-5e2f3a4b6c7d/"],
    )
    depth: int = Field(description="0 for a root.")
    active: bool
    created_at: datetime
    updated_at: datetime
    version: int


class OrgUnitListQuery(ListQuery):
    sort: str = sort_field(
        OrgUnitSort, "path", "Sort keys: `path` (tree order), `name`, `created_at`."
    )
    parent_id: uuid.UUID | None = Field(default=None, description="Direct children of this unit.")
    within: uuid.UUID | None = Field(default=None, description="This unit and every unit below it.")
    root: bool | None = Field(default=None, description="Only roots (true) or only non-roots.")
    kind: list[OrgUnitKind] | None = None
    active: bool | None = Field(default=None, description="Omit for both.")
    q: SearchTerm | None = Field(default=None, description="Substring of the name.")
