"""Prefect flows: each one a table of contents over tasks in `tasks/`."""
