"""Backing services: one module each, with the client lifecycle and a health probe."""
