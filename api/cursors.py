"""Opaque keyset cursors: the sort value of a page's last row and its id, as URL-safe base64 JSON.

A cursor the API did not hand out is a 422 naming the query parameter, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json

from fastapi.exceptions import RequestValidationError

from api.errors import invalid


def encode(value: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([value, row_id]).encode()).decode()


def not_a_cursor(param: str, msg: str = "is not a cursor this API returned") -> RequestValidationError:
    return invalid(("query", param), msg)


def decode(cursor: str, param: str) -> tuple[str, int]:
    """(sort value, id) of a cursor from `encode`; a forged or damaged one raises a 422 naming `param`."""
    try:
        value, row_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise not_a_cursor(param) from None
    if not isinstance(value, str) or "\x00" in value or not isinstance(row_id, int) or not 0 <= row_id < 2**63:
        raise not_a_cursor(param)
    return value, row_id
