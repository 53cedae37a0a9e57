"""api clients placed like records: ``owner_id`` (the creator) and ``org_unit_id`` (the
service account's unit), so the resource kit scopes them with the common predicate

Existing clients get their service account's unit, and as owner the person (or client)
whose ``create`` event the audit trail holds for them; a client without one keeps no
owner, which an ``own`` grant does not reach (fail closed). Data as literals: no
application code is imported.

Revision ID: 0011
Revises: 0006
Create Date: 2026-12-02 09:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_clients", sa.Column("owner_id", sa.UUID(), nullable=True))
    op.add_column("api_clients", sa.Column("org_unit_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        "fk_api_clients_owner_id_users",
        "api_clients",
        "users",
        ["owner_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_foreign_key(
        "fk_api_clients_org_unit_id_org_units",
        "api_clients",
        "org_units",
        ["org_unit_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_index("ix_api_clients_owner_id", "api_clients", ["owner_id"], unique=False)
    op.create_index("ix_api_clients_org_unit_id", "api_clients", ["org_unit_id"], unique=False)
    op.execute(
        "UPDATE api_clients AS c SET org_unit_id = u.org_unit_id"
        " FROM users AS u WHERE u.id = c.user_id"
    )
    op.execute(
        "UPDATE api_clients AS c SET owner_id = e.actor_id"
        " FROM (SELECT DISTINCT ON (resource_id) resource_id, actor_id, actor_type"
        "       FROM audit_events"
        "       WHERE resource_type = 'api_clients' AND action = 'create'"
        "       ORDER BY resource_id, occurred_at) AS e"
        " WHERE e.resource_id = c.id AND e.actor_type IN ('user', 'api_client')"
        " AND EXISTS (SELECT 1 FROM users AS u WHERE u.id = e.actor_id)"
    )


def downgrade() -> None:
    op.drop_index("ix_api_clients_org_unit_id", table_name="api_clients")
    op.drop_index("ix_api_clients_owner_id", table_name="api_clients")
    op.drop_constraint("fk_api_clients_org_unit_id_org_units", "api_clients", type_="foreignkey")
    op.drop_constraint("fk_api_clients_owner_id_users", "api_clients", type_="foreignkey")
    op.drop_column("api_clients", "org_unit_id")
    op.drop_column("api_clients", "owner_id")
