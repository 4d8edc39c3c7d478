"""The audit log's reading side: a tenant's events for its admins (written by platform.audit)."""
