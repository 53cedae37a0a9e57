"""login throttle: per IP, per account and per account+IP keys, back-off and expiry

``lockouts`` drives the doubling lock-out of an account+IP pair; ``expires_at`` lets stale
rows be deleted (unknown usernames used to add a row each, never removed). Rows keyed the
old way (a bare username) expire at once and are deleted by the next cleanup.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 06:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "login_throttle",
        sa.Column("lockouts", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "login_throttle",
        sa.Column(
            "expires_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.alter_column("login_throttle", "expires_at", server_default=None)
    op.create_index("ix_login_throttle_expires_at", "login_throttle", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_login_throttle_expires_at", table_name="login_throttle")
    op.drop_column("login_throttle", "expires_at")
    op.drop_column("login_throttle", "lockouts")
