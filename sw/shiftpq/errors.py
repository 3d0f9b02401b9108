"""User-facing errors: the CLI prints them as ``shiftpq: error: ...`` and exits with code 2."""


class ShiftPQError(Exception):
    """Bad input (a file, a field, an option): the message names it and what was expected."""
