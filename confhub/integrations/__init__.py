"""Glue between confhub and the frameworks and servers a service runs in.

Each submodule is optional and imports its framework only when it is imported itself;
``import confhub`` imports none of them. ``confhub.integrations.gunicorn``: config hooks for
gunicorn's worker processes.
"""
