"""confhub plugin entry point for the etcd backend (glue to be written against the core contract)."""
