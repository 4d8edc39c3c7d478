"""Embedded stand-ins for backing servers, used by the `standalone` role."""
