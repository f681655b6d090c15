"""Alembic revisions (one file each); a package so that setuptools ships them."""
