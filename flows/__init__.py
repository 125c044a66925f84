"""Prefect flows, run configuration and the advloop command line."""
