"""search: lower()ed, generated search columns on customers and contacts; contacts indexes

``q`` searched with one ILIKE per field and scanned every contact's name with ILIKE (which
lower()s both sides on every row): ~150 ms of server CPU per search at 100,000 customers.
The fields are now lower()ed once on write into STORED generated columns (joined by U+001F,
which a term can only hold if the repositories match it field by field instead) and
searched with LIKE. Also: a plain index on contacts.customer_id (every other index on it
is partial, so the cascade of a customer purge scanned all contacts), and indexes for the
contacts' updated_at and name sorts.

Adding a STORED generated column rewrites the table under an ACCESS EXCLUSIVE lock (a few
seconds per million rows).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of crm_api.models.customer.SEARCH_TEXT and crm_api.models.contact.SEARCH_NAME /
# SEARCH_TEXT (a migration must not change when the models do).
FIELDS = (
    "lower(name) || '\x1f' || lower(coalesce(email, '')) || '\x1f' || lower(coalesce(phone, ''))"
)
NAME = "lower(name)"
LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.add_column(
        "customers",
        sa.Column("search_text", sa.Text(), sa.Computed(FIELDS, persisted=True), nullable=False),
    )
    op.add_column(
        "contacts",
        sa.Column("search_name", sa.Text(), sa.Computed(NAME, persisted=True), nullable=False),
    )
    op.add_column(
        "contacts",
        sa.Column("search_text", sa.Text(), sa.Computed(FIELDS, persisted=True), nullable=False),
    )
    op.create_index("ix_contacts_customer_id", "contacts", ["customer_id"], unique=False)
    op.create_index(
        "ix_contacts_updated_at_id",
        "contacts",
        ["updated_at", "id"],
        unique=False,
        postgresql_where=LIVE,
    )
    op.create_index(
        "ix_contacts_name_id", "contacts", ["name", "id"], unique=False, postgresql_where=LIVE
    )


def downgrade() -> None:
    op.drop_index("ix_contacts_name_id", table_name="contacts", postgresql_where=LIVE)
    op.drop_index("ix_contacts_updated_at_id", table_name="contacts", postgresql_where=LIVE)
    op.drop_index("ix_contacts_customer_id", table_name="contacts")
    op.drop_column("contacts", "search_text")
    op.drop_column("contacts", "search_name")
    op.drop_column("customers", "search_text")
