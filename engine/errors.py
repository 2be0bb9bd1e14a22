"""The one exception type for problems with what the user gave us (data, files, settings, decisions).

Commands report a UserError (or a subclass: ConfigError, IntakeError, ExportError) as one sentence
and exit with code 2. Any other exception — a plain ValueError included — is a bug: it is reported
with its traceback and "please report this", exit code 1.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input the engine cannot work with; the message names the problem and what to do."""


def bug_message(error: BaseException, *, where: str = "above") -> str:
    """The one sentence for an unexpected error; its traceback is printed {where} (stderr or the log)."""
    return f"{type(error).__name__}: {error} — this is a bug in CLeaN, please report this (traceback {where})"
