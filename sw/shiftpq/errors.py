"""User-facing errors: the CLI prints them as ``shiftpq: error: ...`` and exits with code 2."""


class ShiftPQError(Exception):
    """Bad input (a file, a field, an option): the message names it and what was expected."""


# How a message names the JSON type a field should have ("field 'x' is "3", expected an integer").
JSON_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object", bool: "true or false"}


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
