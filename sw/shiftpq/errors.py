"""User-facing errors: the CLI prints them as ``shiftpq: error: ...`` and exits with code 2."""


class ShiftPQError(Exception):
    """Bad input (a file, a field, an option): the message names it and what was expected."""


def read_json(path):
    """The JSON value in the file ``path`` (a ``pathlib.Path``); not JSON or unreadable: one
    ShiftPQError naming the file."""
    import json
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise ShiftPQError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ShiftPQError(f"{path}: cannot be read ({e.strerror})") from None
