"""The one exception type for mistakes a user can make (bad path, unknown name, bad option).

The CLI prints its message on one line and exits with code 2; no traceback is shown for these.
"""


class CnnlabError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""
