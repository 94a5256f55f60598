"""Parsing of the pipeline's options as the CLI gives them (``--max-loss``, ``--time-limit``)."""

from __future__ import annotations

from ondevice.errors import BadInputError

__all__ = ["parse_duration", "parse_max_loss"]


def parse_max_loss(text: str | float | None) -> float | None:
    """``2%`` / ``0.02`` -> 0.02; ``off`` / ``none`` -> ``None`` (no quality floor)."""
    if text is None or isinstance(text, float | int) and not isinstance(text, bool):
        value = None if text is None else float(text)
    else:
        raw = str(text).strip().lower()
        if raw in ("off", "none"):
            return None
        try:
            value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            value = float("nan")
    if value is not None and not 0 <= value < 1:
        raise BadInputError(f"cannot use --max-loss {text!r}: give a relative loss in [0, 1) such as 2% or 0.02, or off")
    return value


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int) -> float:
    """``600``, ``90s``, ``10m``, ``1.5h`` -> seconds (> 0); a one-line error otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        raw = str(text).strip().lower()
        num = raw.rstrip("abcdefghijklmnopqrstuvwxyz ")
        unit = raw[len(num):].strip()
        try:
            value = float(num)
        except ValueError:
            value, unit = float("nan"), "?"
    if unit not in _DURATION_UNITS or not (value > 0) or value == float("inf"):
        raise BadInputError(f"cannot read the duration {text!r}; use seconds or a unit: 600, 90s, 10m, 1.5h")
    return value * _DURATION_UNITS[unit]
