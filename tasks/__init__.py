"""Prefect tasks: small typed steps that pass paths, ids and metric dicts between them."""
