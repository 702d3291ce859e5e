"""JSON from the outside world (webhooks, ``/v1`` bodies), loaded so odd values fail early.

Python's ``json`` module accepts what JSON itself allows and then some, and each of those
becomes a 500 or a stuck call later, far from the request: a 400-digit integer or ``1e400``
(``inf``) overflows where a number is turned into an int, ``Infinity``/``NaN`` are not JSON at
all, nesting a few thousand deep raises RecursionError, and a lone UTF-16 surrogate
(``"\\ud800"``) is a str no UTF-8 encoder (SQLite, the AMI socket, the log) will take.
:func:`loads` refuses each with a :class:`StrictJsonError` naming where in the document it is,
so the HTTP layer answers 400 and nothing is processed.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gateway.errors import BadInput

MAX_DEPTH = 64
"""Meta's webhook bodies nest about 8 deep; /v1 bodies 2."""
MAX_INT_DIGITS = 32
"""Timestamps, durations, error codes and TTLs fit in far fewer; ids arrive as strings."""

_SURROGATE = re.compile("[\ud800-\udfff]")


class StrictJsonError(BadInput, ValueError):
    """The body is not acceptable JSON; ``field`` is the top-level key where the problem is
    (or ``"body"`` when it is the document itself)."""

    def __init__(self, path: tuple[str, ...], problem: str):
        self.path = path
        self.field = path[0] if path else "body"
        where = ".".join(path) if path else "body"
        super().__init__(f"{where}: {problem}")


class _Bad:
    """Stands in for a value the decoder met but that must be refused; :func:`_check` finds it
    with its path, so the error can name the field."""

    __slots__ = ("problem",)

    def __init__(self, problem: str):
        self.problem = problem


def _int(text: str) -> int | _Bad:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        return _Bad(f"integer of {len(digits)} digits is out of range")
    return int(text)


def _float(text: str) -> float | _Bad:
    value = float(text)
    if not math.isfinite(value):
        return _Bad(f"number {text[:40]} is out of range")
    return value


def _constant(text: str) -> _Bad:
    return _Bad(f"{text} is not a JSON value")


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` (UTF-8 bytes or text) strictly; raises :class:`StrictJsonError`."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJsonError((), f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        text = raw
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise StrictJsonError((), f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise StrictJsonError((), f"not JSON ({exc.msg} at line {exc.lineno} column "
                                  f"{exc.colno})") from None
    except (ValueError, TypeError) as exc:  # e.g. an int over sys.int_info's digit limit
        raise StrictJsonError((), f"not acceptable JSON ({exc})") from None
    _check(value, max_depth)
    return value


def _check(root: Any, max_depth: int) -> None:
    """Walk the document without recursion: depth, refused numbers, lone surrogates."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(root, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > max_depth:
            raise StrictJsonError((), f"nested deeper than {max_depth} levels")
        if isinstance(value, _Bad):
            raise StrictJsonError(path, value.problem)
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise StrictJsonError(path, "text holds a lone UTF-16 surrogate")
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    raise StrictJsonError(path, "a key holds a lone UTF-16 surrogate")
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))
