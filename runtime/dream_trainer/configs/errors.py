"""One error type for bad configuration, with messages that name the field, the value and the fix."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field, the value and the fix."""

    def __init__(self, field: str, value: Any, problem: str, fix: str) -> None:
        self.field, self.value = field, value
        super().__init__(f"{field}={value!r}: {problem}. Fix: {fix}.")


def require_int(field: str, value: Any, *, minimum: int, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int >= ``minimum`` (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "an int" + (" or None" if allow_none else "")
        raise ConfigError(field, value, f"expected {expected}, got {type(value).__name__}",
                          f"pass an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(field, value, f"must be >= {minimum}", f"pass an integer >= {minimum}")


def require_number(field: str, value: Any, *, minimum: float, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a real number >= ``minimum``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, value, f"expected a number, got {type(value).__name__}",
                          f"pass a number >= {minimum}")
    if value < minimum:
        raise ConfigError(field, value, f"must be >= {minimum}", f"pass a number >= {minimum}")


def require_bool(field: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ConfigError(field, value, f"expected a bool, got {type(value).__name__}",
                          "pass True or False")


def require_choice(field: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(field, value, f"must be one of {choices}",
                          f"pass one of {', '.join(map(repr, choices))}")
