"""The exceptions that reach users, always as a single line: usercr.Error
and its subclasses (UcrError is the name the code base raises it by)."""


class Error(Exception):
    """An error with a message fit to print as one line."""


UcrError = Error


class UsageError(Error):
    """A command line or call that is wrong in itself (an unknown, repeated or
    conflicting option, a missing argument): exit status 2."""


def log_nothing(msg):
    """The default progress log: silent."""
