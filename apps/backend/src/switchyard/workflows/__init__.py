"""Workflows: named, versioned graphs of registered tasks whose steps pass their results on."""
