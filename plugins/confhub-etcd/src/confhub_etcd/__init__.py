"""confhub's etcd v3 backend.

The confhub-facing plugin lives in ``confhub_etcd._plugin`` (entry point group ``confhub``,
name ``etcd``). ``confhub_etcd._client`` is a confhub-independent etcd client layer (paged reads
at one revision, a resilient prefix watcher, compare-and-swap writes; see
``docs/client-notes.md`` for its modules) and ``confhub_etcd.testing`` a harness that runs
real etcd members for tests, with hooks on the client.

Nothing heavy is imported here: importing the package does not load gRPC.
"""
