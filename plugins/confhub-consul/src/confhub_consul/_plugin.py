"""confhub plugin entry point for the Consul backend.

Placeholder: the Consul backend (``_backend.py``) and its hook implementations land here.
"""
