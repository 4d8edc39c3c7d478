class RoleConfigurationError(Exception):
    """A role cannot start with this configuration; the message is one line for the operator."""
