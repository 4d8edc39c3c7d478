"""A tenant's external database connections: stored encrypted, shown redacted, tested by a task."""
