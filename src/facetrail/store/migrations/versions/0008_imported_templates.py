"""Imported templates: templates migrated from another system, with no face of ours behind them.

`templates.face_id` may now be NULL (an imported template: its image and face stayed with the
system it came from), and `templates.image_sha256` keeps that system's hash of the source
image when it gave one, so an export says where every template came from.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite rebuilds the table to change a column; keep AUTOINCREMENT so that ids of erased
    # templates are never handed out again.
    with op.batch_alter_table(
        "templates", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.alter_column("face_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("image_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Imported templates cannot exist in the older schema.
    op.execute("DELETE FROM templates WHERE face_id IS NULL")
    with op.batch_alter_table(
        "templates", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("image_sha256")
        batch_op.alter_column("face_id", existing_type=sa.Integer(), nullable=False)
