"""The one user-facing error type.

An ``EdgeDLError`` means the user can fix it: its message says what failed and what to do. The CLI prints it on
one line and exits 1 (traceback only with ``--debug``). Anything else that escapes is a bug.
"""


class EdgeDLError(Exception):
    """A problem the user can fix; the message says what to do."""

    exit_code = 1
