"""The one exception type for mistakes a user can make (bad path, unknown name, bad option), and its kinds.

The CLI prints its message on one line and exits with code 2 (a kind's `exit_code` otherwise); no traceback is
shown for these.
"""


class CnnlabError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class ParityError(CnnlabError):
    """An exported model does not compute what the PyTorch model computes (exit code 1, not a user mistake)."""

    exit_code = 1
