"""org-unit walks: indexes an org-scoped customer page walks per unit

An org-scoped list (a branch manager's subtree) is built as a merge of per-unit walks
(``crm_api.kit.scoped_page``): each unit's first rows in page order come from an index
led by ``org_unit_id``. ``(org_unit_id, created_at, id)`` exists since 0001; this adds one
per other sort key and the pipeline view's (a stage, newest first), over live rows.

Revision ID: 0010
Revises: 0011
Create Date: 2026-12-02 09:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "deleted_at IS NULL"

INDEXES = {
    "ix_customers_org_unit_updated": ["org_unit_id", "updated_at", "id"],
    "ix_customers_org_unit_name": ["org_unit_id", "name", "id"],
    "ix_customers_org_unit_stage_created": ["org_unit_id", "lifecycle_stage", "created_at", "id"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "customers", columns, postgresql_where=sa.text(LIVE))


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="customers")
