"""The tasks domain: the REST face of the task platform."""
