"""The one exception type for problems with what the user gave us (data, files, settings, decisions).

Commands report a UserError as one sentence and exit with code 2; any other exception is a bug and
is reported with its traceback (exit code 1).
"""


class UserError(ValueError):
    """Input the engine cannot work with; the message names the problem and what to do."""
