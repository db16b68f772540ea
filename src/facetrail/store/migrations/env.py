"""Alembic environment for the facetrail store.

`Store.open` runs the migrations programmatically and hands its own connection over in
`config.attributes["connection"]`, inside a transaction it owns, so the schema change and
the data-directory lock are under its control. Offline mode (`alembic upgrade --sql`) renders
SQL for a database administrator from `sqlalchemy.url`.
"""

from __future__ import annotations

from alembic import context

from facetrail.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    """Render the migrations as SQL without a database."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate through the connection the caller passed in."""
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("facetrail migrations run through Store.open, which passes a connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
