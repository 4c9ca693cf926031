"""confhub plugin entry point for the etcd backend.

The glue against the core's backend contract is written separately; see ``_client``.
"""
