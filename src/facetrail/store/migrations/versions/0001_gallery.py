"""Gallery: subjects, images, faces, templates and the store generation counter.

Written by hand, self-contained (it does not import the ORM models, which will move on), and
kept identical to them: tests compare the two with Alembic's autogenerate.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subjects",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subjects"),
        sa.UniqueConstraint("name", name="uq_subjects_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["subjects.id"],
            name="fk_images_subject_id_subjects",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.UniqueConstraint("subject_id", "sha256", name="uq_images_subject_id_sha256"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_sha256", "images", ["sha256"], unique=False)
    op.create_table(
        "faces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("x2", sa.Float(), nullable=False),
        sa.Column("y2", sa.Float(), nullable=False),
        sa.Column("landmarks", sa.JSON(), nullable=False),
        sa.Column("detector_score", sa.Float(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("chip_sha256", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name="fk_faces_image_id_images",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_faces"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_faces_image_id", "faces", ["image_id"], unique=False)
    op.create_index("ix_faces_chip_sha256", "faces", ["chip_sha256"], unique=False)
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("face_id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["face_id"],
            ["faces.id"],
            name="fk_templates_face_id_faces",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["subjects.id"],
            name="fk_templates_subject_id_subjects",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_templates_face_id", "templates", ["face_id"], unique=False)
    op.create_index("ix_templates_subject_id", "templates", ["subject_id"], unique=False)
    op.create_index("ix_templates_model", "templates", ["model"], unique=False)
    store_state = op.create_table(
        "store_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_store_state"),
    )
    op.bulk_insert(store_state, [{"key": "generation", "value": 0}])


def downgrade() -> None:
    op.drop_table("store_state")
    op.drop_index("ix_templates_model", table_name="templates")
    op.drop_index("ix_templates_subject_id", table_name="templates")
    op.drop_index("ix_templates_face_id", table_name="templates")
    op.drop_table("templates")
    op.drop_index("ix_faces_chip_sha256", table_name="faces")
    op.drop_index("ix_faces_image_id", table_name="faces")
    op.drop_table("faces")
    op.drop_index("ix_images_sha256", table_name="images")
    op.drop_table("images")
    op.drop_table("subjects")
