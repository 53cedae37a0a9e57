"""search grams on products and orders: ``q`` through the kit's n-gram index (issue 9)

The same GIN expression index as customers' and contacts' (migration 0008:
``crm_search_grams(search_text)`` over live rows, statistics target 1,000), on:

- ``products``: its generated ``search_text`` is redefined with the name first (name, SKU,
  brand, series; 0006 put the SKU first). The index tags the first field's grams as the
  name's, and relevance ranks on the name. PostgreSQL 15 cannot change a generated
  column's expression, so the column is dropped and added again: a rewrite of the catalog
  table under an ACCESS EXCLUSIVE lock (the catalog is small: thousands of rows).
- ``orders``: its ``search_text`` (number, external_ref; migration 0007) is indexed as it
  is. The customer's name is found through the customers' index (``Referenced`` in
  ``crm_api.kit.search``). Building it at 1,000,000 orders: see docs/benchmarks.md.

Revision ID: 0012_sdecl
Revises: 0012_fixes
Create Date: 2026-12-02 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_sdecl"
down_revision: str | None = "0012_fixes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of crm_api.models.product.SEARCH_TEXT, now and before (migration 0006): a
# migration must not change when the models do.
PRODUCTS_TEXT = (
    "lower(name) || '\x1f' || lower(sku) || '\x1f' || lower(coalesce(brand, ''))"
    " || '\x1f' || lower(coalesce(series, ''))"
)
PRODUCTS_TEXT_0006 = (
    "lower(sku) || '\x1f' || lower(name) || '\x1f' || lower(coalesce(brand, ''))"
    " || '\x1f' || lower(coalesce(series, ''))"
)

INDEXES = (
    ("ix_products_search_grams", "products"),
    ("ix_orders_search_grams", "orders"),
)


def _search_text(expression: str) -> None:
    op.drop_column("products", "search_text")
    op.add_column(
        "products",
        sa.Column(
            "search_text", sa.Text(), sa.Computed(expression, persisted=True), nullable=False
        ),
    )


def upgrade() -> None:
    _search_text(PRODUCTS_TEXT)
    for name, table in INDEXES:
        op.execute(
            f"CREATE INDEX {name} ON {table} USING gin (crm_search_grams(search_text))"
            " WHERE deleted_at IS NULL"
        )
        # as in 0008: ANALYZE keeps the 10,000 most common grams the strategy reads
        op.execute(f"ALTER INDEX {name} ALTER COLUMN 1 SET STATISTICS 1000")


def downgrade() -> None:
    for name, _table in INDEXES:
        op.execute(f"DROP INDEX {name}")
    _search_text(PRODUCTS_TEXT_0006)
