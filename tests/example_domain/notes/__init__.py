"""Notes: short texts a tenant keeps; a task counts each note's words."""

from switchyard.domains import Domain

DOMAIN = Domain("notes", package=__name__, tasks=True, migrations=True)
