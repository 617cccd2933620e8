"""The exception hierarchy of fmprobe.

``UsageError`` and its subclasses mean the user asked for something that cannot be done as
asked (bad option, missing file, unknown model): the CLI prints their one-line message and
exits with code 2.  Any other ``FmprobeError`` is a failure at run time (exit code 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FmprobeError(Exception):
    """Base class of every error fmprobe raises on purpose."""


class UsageError(FmprobeError):
    """Bad usage or bad input; the message names what was wrong and how to fix it."""


class DataError(UsageError):
    """The ``--data`` input cannot be read as given (missing file, duplicate ids, ...)."""


class ModelError(UsageError):
    """The ``--model`` spec, weights or layer selection cannot be honoured."""


class StoreError(UsageError):
    """The feature store is missing, inconsistent with the request, or was made from other data."""


class ImageReadError(FmprobeError):
    """One sample could not be decoded; embed records and skips it unless ``--strict``."""


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 3) -> str:
    """Return ``" (did you mean 'a', 'b'?)"`` for close matches of ``name``, or ``""``."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean " + ", ".join(repr(m) for m in matches) + "?)"


def first_line(exc: BaseException, *, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name when it has none), for the
    one-line errors that wrap a library's exception.

    >>> first_line(ValueError("bad value\\nmore detail"))
    'bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
