"""catalog: system settings and products, with their default grants

``system_settings`` is one row (``id = 1``) of the values administrators set; every other
setting is at the default the code declares. Its ``version`` is the ETag and what every
worker's policy poll watches. ``products`` is the catalog: reference data (no owner) every
role that sells or services reads; SKUs are unique case-insensitively among live products.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:30:00.000000
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of crm_api.models.product.SEARCH_TEXT (a migration must not change when the
# models do).
SEARCH_TEXT = (
    "lower(sku) || '\x1f' || lower(name) || '\x1f' || lower(coalesce(brand, ''))"
    " || '\x1f' || lower(coalesce(series, ''))"
)
LIVE = sa.text("deleted_at IS NULL")

#: The default grants this revision adds (role, resource, action, scope). Literal on
#: purpose: a migration never imports live application code. Writes stay with ``admin``
#: (``* * all``), who can grant them to other roles.
_GRANTS: list[tuple[str, str, str, str]] = [
    ("executive", "products", "read", "all"),
    ("sales_manager", "products", "read", "all"),
    ("sales_rep", "products", "read", "all"),
    ("service_agent", "products", "read", "all"),
    ("marketer", "products", "read", "all"),
    ("partner", "products", "read", "all"),
    ("executive", "system_settings", "read", "all"),
    ("sales_manager", "system_settings", "read", "all"),
    ("sales_rep", "system_settings", "read", "all"),
    ("service_agent", "system_settings", "read", "all"),
    ("marketer", "system_settings", "read", "all"),
    ("staff", "system_settings", "read", "all"),
]


def upgrade() -> None:
    op.create_table(
        "system_settings",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column(
            "values",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_system_settings_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_settings")),
    )
    op.create_table(
        "products",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("brand", sa.String(length=100), nullable=True),
        sa.Column("series", sa.String(length=100), nullable=True),
        sa.Column("category", sa.String(length=100), nullable=True),
        sa.Column("unit", sa.String(length=20), nullable=True),
        sa.Column("list_price", sa.Numeric(precision=18, scale=4), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("tax_rate", sa.Numeric(precision=7, scale=4), server_default="0", nullable=False),
        sa.Column(
            "parameters",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), server_default="true", nullable=False),
        sa.Column(
            "search_text", sa.Text(), sa.Computed(SEARCH_TEXT, persisted=True), nullable=False
        ),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_products_currency")),
        sa.CheckConstraint("list_price >= 0", name=op.f("ck_products_list_price")),
        sa.CheckConstraint("tax_rate >= 0 AND tax_rate <= 1", name=op.f("ck_products_tax_rate")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
    )
    op.create_index(
        "uq_products_sku_live",
        "products",
        [sa.text("lower(sku)")],
        unique=True,
        postgresql_where=LIVE,
    )
    op.create_index(
        "ix_products_created_at_id", "products", ["created_at", "id"], postgresql_where=LIVE
    )
    op.create_index(
        "ix_products_updated_at_id", "products", ["updated_at", "id"], postgresql_where=LIVE
    )
    op.create_index("ix_products_name_id", "products", ["name", "id"], postgresql_where=LIVE)
    op.create_index("ix_products_sku_id", "products", ["sku", "id"], postgresql_where=LIVE)
    op.create_index(
        "ix_products_list_price_id", "products", ["list_price", "id"], postgresql_where=LIVE
    )
    op.create_index(
        "ix_products_brand_series", "products", ["brand", "series"], postgresql_where=LIVE
    )
    op.create_index("ix_products_category", "products", ["category"], postgresql_where=LIVE)
    op.create_index(
        "ix_products_deleted_at",
        "products",
        ["deleted_at"],
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
    )

    rules = sa.table(
        "authz_rules",
        sa.column("id", sa.Uuid),
        sa.column("ptype", sa.String),
        *(sa.column(f"v{i}", sa.String) for i in range(6)),
    )
    op.bulk_insert(
        rules,
        [
            {
                "id": uuid.uuid4(),
                "ptype": "p",
                "v0": role,
                "v1": res,
                "v2": act,
                "v3": scope,
                "v4": "",
                "v5": "",
            }
            for role, res, act, scope in _GRANTS
        ],
    )
    # running workers pick the new grants up on their next poll
    op.execute("UPDATE authz_state SET version = version + 1, changed_at = now() WHERE id = 1")


def downgrade() -> None:
    for role, res, act, scope in _GRANTS:
        op.execute(
            sa.text(
                "DELETE FROM authz_rules WHERE ptype = 'p' AND v0 = :role AND v1 = :res"
                " AND v2 = :act AND v3 = :scope"
            ).bindparams(role=role, res=res, act=act, scope=scope)
        )
    op.execute("UPDATE authz_state SET version = version + 1, changed_at = now() WHERE id = 1")
    op.drop_index(
        "ix_products_deleted_at",
        table_name="products",
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
    )
    op.drop_index("ix_products_category", table_name="products", postgresql_where=LIVE)
    op.drop_index("ix_products_brand_series", table_name="products", postgresql_where=LIVE)
    op.drop_index("ix_products_list_price_id", table_name="products", postgresql_where=LIVE)
    op.drop_index("ix_products_sku_id", table_name="products", postgresql_where=LIVE)
    op.drop_index("ix_products_name_id", table_name="products", postgresql_where=LIVE)
    op.drop_index("ix_products_updated_at_id", table_name="products", postgresql_where=LIVE)
    op.drop_index("ix_products_created_at_id", table_name="products", postgresql_where=LIVE)
    op.drop_index("uq_products_sku_live", table_name="products", postgresql_where=LIVE)
    op.drop_table("products")
    op.drop_table("system_settings")
