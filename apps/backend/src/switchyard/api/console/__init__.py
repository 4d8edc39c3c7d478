"""The operator console under /console: pages served from this package (no CDN, no Node at
run time) whose script calls the same /api/v1 routes as any client, signed in by a cookie
session (see `session`)."""
