"""Built-in tasks for trying and testing the platform."""
