"""Setting values read from text, shared by runtara-core's configuration
(``runtara.config``) and the SDK's (``runtara.sdk.config``).

A value parser takes the text of an environment variable (or an option)
and returns the value, or raises ``ValueError`` with a message that does not
repeat the text's source; the configuration turns that into its
``ConfigurationError``, which names the variable or option.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["ConfigurationError", "boolean", "integer"]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class ConfigurationError(ValueError):
    """A configuration value is invalid; ``str()`` is one line naming its source.

    ``variable`` is the environment variable (or the option, ``--port``) the
    value came from; ``message`` says what is wrong with it.
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(variable, message)
        self.variable = variable
        self.message = message

    def __str__(self) -> str:
        return f"{self.variable}: {self.message}"


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A parser of decimal integers in ``[minimum, maximum]`` (no upper bound without
    ``maximum``); surrounding white space is ignored."""
    expected = (
        f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    )

    def parse(text: str) -> int:
        stripped = text.strip()
        if re.fullmatch(r"-?[0-9]+", stripped):
            number = int(stripped)
            if number >= minimum and (maximum is None or number <= maximum):
                return number
        raise ValueError(f"must be {expected}, got {text!r}")

    return parse


def boolean(text: str) -> bool:
    """``true``, ``1``, ``yes``, ``on`` or ``false``, ``0``, ``no``, ``off``, in any case."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"must be true or false, got {text!r}")
