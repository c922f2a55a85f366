"""The one exception type that reaches users, always as a single line."""


class UcrError(Exception):
    """An error with a message fit to print as one line."""


def log_nothing(msg):
    """The default progress log: silent."""
