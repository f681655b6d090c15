"""Alembic migrations of the SQL schema, run programmatically by ``storage.db.upgrade``."""
