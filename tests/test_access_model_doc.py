"""docs/access-model.md says what authz/scope.py builds: each scope's predicate, as the
compiled SQL has it (the org_subtree one was still described as ``IN (subquery)`` after it
became ``= ANY(array)``)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import column
from sqlalchemy.dialects import postgresql

from crm_api.authz.scope import scope_clause
from crm_api.authz.types import Access, Principal, PrincipalKind, Scope, ScopeKind
from crm_api.kit.filtering import mask

DOC = (Path(__file__).resolve().parent.parent / "docs" / "access-model.md").read_text()
SECTION = DOC.split("## How scopes are enforced", 1)[1].split("\n## ", 1)[0]


def _sql(kind: ScopeKind) -> str:
    principal = Principal(
        PrincipalKind.user,
        uuid.uuid4(),
        "u",
        frozenset(),
        org_unit_id=uuid.uuid4(),
        org_path="/a/b/",
        manager_path="/m/u/",
    )
    access = Access(
        principal, "customers", "read", Scope(frozenset({kind}), frozenset({uuid.uuid4()}))
    )
    clause = scope_clause(access, column("owner_id"), column("org_unit_id"), column("created_by"))
    return str(clause.compile(dialect=postgresql.dialect()))


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(
    ("kind", "sql_has", "doc_has"),
    [
        (ScopeKind.own, "owner_id = ", "`own`: `owner_id = :me`"),
        (ScopeKind.created_by_self, "created_by = ", "`created_by_self`: `created_by = :me`"),
        (
            ScopeKind.subordinates,
            "owner_id IN (SELECT users.id FROM users WHERE",
            "owner_id IN (SELECT id FROM users WHERE manager_path LIKE",
        ),
        (ScopeKind.org_unit, "org_unit_id = ", "`org_unit`: `org_unit_id = :my_unit`"),
        (ScopeKind.custom, "org_unit_id IN (", "`custom`: `org_unit_id IN (:unit, …)`"),
        (
            ScopeKind.org_subtree,
            "org_unit_id = ANY (CAST((SELECT array_agg(org_units.id)",
            "org_unit_id = ANY(CAST((SELECT array_agg(id) FROM org_units WHERE path LIKE",
        ),
    ],
)
def test_each_scope_is_documented_as_built(kind, sql_has, doc_has):
    assert sql_has in _flat(_sql(kind)), _sql(kind)
    assert doc_has in _flat(SECTION), doc_has


def test_org_subtree_is_no_longer_described_as_in_subquery():
    assert "org_unit_id IN (SELECT id FROM org_units" not in _flat(DOC)


def test_the_documented_mask_is_the_masker_s():
    assert mask("6222020200113445") == "****3445" and "`****3445`" in SECTION
    assert mask("123456") == "****"
