"""Consul KV backend for confhub.

The backend itself is loaded through the ``confhub`` entry point (``confhub_consul._plugin``).
Tests can use :mod:`confhub_consul.testing`, a protocol-level Consul test server. This module
imports nothing so that importing the package stays cheap.
"""

__all__: list[str] = []
