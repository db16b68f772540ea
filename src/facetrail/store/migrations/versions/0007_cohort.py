"""The score-normalisation cohort: descriptors of faces of people who are not subjects, with
where each came from and who added it; and what a stored search's scores are (issue 10).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cohort_faces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cohort_faces")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("cohort_faces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cohort_faces_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_cohort_faces_source"), ["source"], unique=False)
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scoring", sa.String(length=32), nullable=False, server_default="cosine")
        )


def downgrade() -> None:
    with op.batch_alter_table("searches", schema=None) as batch_op:
        batch_op.drop_column("scoring")
    with op.batch_alter_table("cohort_faces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cohort_faces_source"))
        batch_op.drop_index(batch_op.f("ix_cohort_faces_model"))
    op.drop_table("cohort_faces")
