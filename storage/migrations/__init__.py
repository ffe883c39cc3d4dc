"""Alembic migrations (numbered: 0001_registry, 0002_..., batch mode on SQLite)."""
