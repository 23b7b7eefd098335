"""The one exception type every stage raises for bad user input.

Dependency-free so that every package (quant, compiler, hw, sim, boards) may raise it.
The CLI prints its message as one line and exits with code 2, no traceback.
"""


class UserError(Exception):
    """Bad input a user can fix: the message names the file/node/value and what to do."""

    exit_code = 2
