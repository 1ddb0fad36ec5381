"""Database: typed models, engine and sessions, Alembic migrations."""
