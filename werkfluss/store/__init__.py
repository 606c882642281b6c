"""The store: the only door to PostgreSQL."""
