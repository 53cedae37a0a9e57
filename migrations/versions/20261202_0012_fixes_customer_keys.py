"""customers: every customer holds its e-mail and phone natural keys, not only the ones an
upsert created

Until now the partial unique indexes of migration 0009 covered only customers with
``key_kind = 'email'`` (``'phone'``): a customer made by ``POST /v1/customers`` or given its
e-mail by ``PATCH`` had the generated ``email_key`` but no ``key_kind``, so a storefront's
order for that e-mail did not find it and created a duplicate.

- ``customers.email_held`` / ``phone_held`` (boolean, default true, so every writer — the
  API, a script, ``COPY`` — makes rows that hold their keys): the indexes become
  ``(email_key) WHERE deleted_at IS NULL AND email_held`` (likewise phone), so the e-mail
  and the phone are unique among live customers, as the tax number is.
- Existing duplicates would block those indexes. They are kept, not merged or changed:
  among the live customers sharing a key, the one an upsert keyed by it (``key_kind``), else
  the oldest (``created_at``, then ``id``), holds it; the others get ``*_held = false``
  (listed by ``SELECT id, email FROM customers WHERE NOT email_held`` for a person to
  merge). Customers in the trash keep the flag: restoring one whose key a live customer
  holds is a 409, as for the tax number.

Adding a column with a constant default does not rewrite the table; the backfill updates
only the duplicates; the two indexes are rebuilt (a few seconds per million rows, under
the table's lock: customers cannot be written meanwhile).

Revision ID: 0012_fixes
Revises: 0008
Create Date: 2026-12-02 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_fixes"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (natural key column, holder flag, key_kind value, index)
_KEYS = (
    ("email_key", "email_held", "email", "uq_customers_email_key_live"),
    ("phone_key", "phone_held", "phone", "uq_customers_phone_key_live"),
)


def upgrade() -> None:
    for key, held, kind, index in _KEYS:
        op.add_column(
            "customers",
            sa.Column(held, sa.Boolean(), server_default="true", nullable=False),
        )
        # the younger live duplicates give the key up (see the docstring)
        op.execute(
            f"""
            UPDATE customers c SET {held} = false
            FROM (
                SELECT id, row_number() OVER (
                    PARTITION BY {key}
                    ORDER BY (key_kind IS NOT DISTINCT FROM '{kind}') DESC, created_at, id
                ) AS n
                FROM customers
                WHERE deleted_at IS NULL AND {key} IS NOT NULL
            ) d
            WHERE d.id = c.id AND d.n > 1
            """
        )
        op.drop_index(
            index,
            table_name="customers",
            postgresql_where=sa.text(f"deleted_at IS NULL AND key_kind = '{kind}'"),
        )
        op.create_index(
            index,
            "customers",
            [key],
            unique=True,
            postgresql_where=sa.text(f"deleted_at IS NULL AND {held}"),
        )


def downgrade() -> None:
    for key, held, kind, index in _KEYS:
        op.drop_index(
            index,
            table_name="customers",
            postgresql_where=sa.text(f"deleted_at IS NULL AND {held}"),
        )
        op.create_index(
            index,
            "customers",
            [key],
            unique=True,
            postgresql_where=sa.text(f"deleted_at IS NULL AND key_kind = '{kind}'"),
        )
        op.drop_column("customers", held)
