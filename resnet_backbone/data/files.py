"""Reading the dataset's own files (annotation json, ground-truth txt), with a `DatasetError` naming the file."""
from __future__ import annotations

import json

from .errors import DatasetError, shorten

__all__ = ["read_bytes", "read_json"]


def read_bytes(path: str, what: str, field: str) -> bytes:
    """The bytes of `path`; a missing or unreadable file raises `DatasetError` ("<what> does not exist", ...)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise DatasetError(f"{what} does not exist", file=path, field=field) from e
    except OSError as e:
        raise DatasetError(f"cannot read the {what} ({e.strerror or e})", file=path, field=field) from e


def read_json(path: str):
    """The parsed json of the annotation file `path` (UTF-8 with or without a BOM, UTF-16 or UTF-32, as json
    detects). Missing / unreadable: field "json_file"; not json: field "json", with the line and column."""
    raw = read_bytes(path, "annotation file", "json_file")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"not valid json: {e.msg}", file=path, record=f"line {e.lineno} column {e.colno}",
                           field="json") from e
    except (UnicodeDecodeError, RecursionError, ValueError) as e:  # ValueError: an integer of > 4300 digits
        raise DatasetError(f"not valid json: {shorten(str(e), 300)}", file=path, record="<file>", field="json") from e
