"""Tenants: the platform superuser's view of all, and an admin's view of their own."""
