"""Declarative base, models and migrations."""
