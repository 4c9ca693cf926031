"""Integrations with web frameworks and servers, each in its own module.

Each module imports its framework, so import the one you use (``import confhub`` imports none
of them): ``confhub.integrations.starlette`` (Starlette and FastAPI),
``confhub.integrations.flask``. ``docs/web.md`` shows them at work.
"""
