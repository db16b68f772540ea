"""Live deployments that a service restart can resume (which process runs a deployment, and
whether it may be resumed: started by the service, from a source without credentials), and
what the transparency report publishes of each: where it was and how many people its
watchlist held.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runner", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("resumable", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("resumed", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("location", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("watchlist_size", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("watchlist_size")
        batch_op.drop_column("location")
        batch_op.drop_column("resumed")
        batch_op.drop_column("resumable")
        batch_op.drop_column("runner")
