"""The HTTP API: app factory, routes, dependencies and error rendering."""
