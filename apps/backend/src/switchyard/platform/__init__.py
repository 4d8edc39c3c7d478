"""The task platform: Celery app, registry, queue topology, ledger, dead letters, beat."""
