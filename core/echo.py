"""Echoing user input back in error messages, bounded.

A message that repeats what was sent helps the sender see their mistake; a message that
repeats 10 kB of it does not. Every error that quotes an input quotes it through
:func:`echo`.
"""

from __future__ import annotations

#: Characters of an input's repr quoted in an error message.
ECHO_LIMIT = 80


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """Returns ``repr(value)``, or its first ``limit`` characters followed by
    ``"... (N chars)"`` when longer (N: the length of ``value`` itself when it has one,
    else of its repr)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    try:
        size = len(value)  # type: ignore[arg-type]
    except TypeError:
        size = len(text)
    return f"{text[:limit]}... ({size} chars)"


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """Returns ``text``, or its first ``limit`` characters followed by ``"... (N chars)"``."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
