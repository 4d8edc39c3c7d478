class RoleConfigurationError(Exception):
    """A role cannot start with this configuration; the message is one line for the operator."""


class RoleStartupError(Exception):
    """A role could not start for a reason outside its configuration; one line for the operator."""
