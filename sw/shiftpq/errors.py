"""User-facing errors: the CLI prints them as ``shiftpq: error: ...`` and exits with code 2."""


class ShiftPQError(Exception):
    """Bad input (a file, a field, an option): the message names it and what was expected."""


# How a message names the JSON type a field should have ("field 'x' is "3", expected an integer").
JSON_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object", bool: "true or false"}


def check_fields(path, d, spec: dict, where: str = "") -> dict:
    """``d``, a JSON object read from ``path``, with every field of ``spec`` (name -> the JSON types
    it may have: ``int``, ``float`` (any number), ``str``, ``bool``, ``list``, ``dict``, ``None``)
    present and of one of its types; the first problem is one ShiftPQError naming the file and the
    field (``where`` prefixes the field: ``layers[3].``)."""
    if type(d) is not dict:
        raise ShiftPQError(f"{path}: {where.rstrip('.') or 'the file'} is {d!r:.60}, expected an object")
    for key, types in spec.items():
        if key not in d:
            raise ShiftPQError(f"{path}: field '{where}{key}' is missing")
        v = d[key]
        ok = (type(v) in types or (v is None and None in types)
              or (float in types and type(v) is int))  # a number may be written without a fraction
        if not ok:
            names = " or ".join("null" if t is None else "a number" if t is float else JSON_TYPE_NAMES[t]
                                for t in types)
            raise ShiftPQError(f"{path}: field '{where}{key}' is {v!r:.60}, expected {names}")
    return d


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
