"""Video probes: probe media gain their kind, hash, duration and completeness; probe faces
gain the track they stand for and when it was on screen.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("probe_faces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("track", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("start", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("end", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("best_time", sa.Float(), nullable=True))

    with op.batch_alter_table("probe_media", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="image", nullable=False)
        )
        batch_op.add_column(sa.Column("media_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("duration", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("complete", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(sa.Column("warnings", sa.JSON(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_probe_media_media_sha256"), ["media_sha256"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("probe_media", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_probe_media_media_sha256"))
        batch_op.drop_column("warnings")
        batch_op.drop_column("complete")
        batch_op.drop_column("duration")
        batch_op.drop_column("media_sha256")
        batch_op.drop_column("kind")

    with op.batch_alter_table("probe_faces", schema=None) as batch_op:
        batch_op.drop_column("best_time")
        batch_op.drop_column("end")
        batch_op.drop_column("start")
        batch_op.drop_column("track")
