"""The one user-facing error type.

An ``EdgeDLError`` means the user can fix it: its message says what failed and what to do. The CLI prints it on
one line and exits 1 (traceback only with ``--debug``). Anything else that escapes is a bug.

Library code (the runtime above all) knows no command line: it says what to do in its own terms (``hint``) and
may name the setting that fixes it (``option``: a key and a value, e.g. ``("input_shape", "x=1x3x48x192")``, or
``None`` for a switch such as ``("allow_fallback", None)``);
the CLI turns that into the flag to pass (``edgedl.cli._errors``).
"""

from __future__ import annotations


class EdgeDLError(Exception):
    """A problem the user can fix; the message says what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, option: tuple[str, str | None] | None = None):
        self.message, self.hint, self.option = message, hint, option
        super().__init__(f"{message}; {hint}" if hint else message)
