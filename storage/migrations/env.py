"""Alembic environment: runs on the connection that ``storage.db`` hands over (no alembic.ini).

``storage.db.upgrade`` opens the transaction (and on PostgreSQL takes the migration advisory
lock), puts the synchronous connection in ``config.attributes["connection"]`` and calls the
Alembic command; this file only configures the migration context on it. Offline mode
(``alembic upgrade --sql``) renders SQL for the URL in ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context

from storage.models import metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through storage.db.upgrade(url), which supplies the connection")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite rebuilds tables to ALTER them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
