"""gunicorn settings for a confhub service: ``gunicorn -c gunicorn.conf.py app:wsgi_app``.

The two hooks make workers safe with or without ``--preload``: a worker that inherited the
arbiter's running hub waits (bounded) until it re-read its sources in its own process, and
every worker closes its hubs when it exits. Add ``-k uvicorn.workers.UvicornWorker`` and
``app:asgi_app`` for an ASGI app.
"""

from confhub.integrations.gunicorn import post_fork, worker_exit  # noqa: F401

workers = 2
bind = "127.0.0.1:8000"
