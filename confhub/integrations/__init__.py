"""Integrations with frameworks, servers and observability tools.

Each is a submodule that imports its framework or library only when you import it
(``import confhub`` imports none of them), installed with an extra: for example
``confhub.integrations.prometheus`` with ``pip install confhub[prometheus]``,
``confhub.integrations.starlette`` (Starlette and FastAPI) and ``confhub.integrations.flask``
with the framework installed (``docs/web.md``); ``confhub.integrations.gunicorn``: the
gunicorn server hooks (``post_fork``, ``worker_exit``), which import nothing from gunicorn.
"""
