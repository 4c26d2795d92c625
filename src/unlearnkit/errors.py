"""The one exception type users see.

Everything that is the caller's fault (an unknown name, a malformed request, a bad id, a corrupted
checkpoint) raises :class:`UnlearnKitError` with a one-line message that says what to do. The CLI prints
that message and exits with status 2; anything else is a bug and keeps its traceback.
"""


class UnlearnKitError(Exception):
    """A problem with the caller's input, files or configuration (not a bug in unlearnkit)."""
