"""Constraints of the architecture search from flags or a device profile (``--budget``,
``--latency-p99``, ``--device-profile``); the search and its run folder are
``ondevice.pipeline.search_runs.search_architecture``."""

from __future__ import annotations

import re
from pathlib import Path

from ondevice.budget import load_profile, parse_budget
from ondevice.errors import BadInputError
from ondevice.search.architecture.evolutionary import Constraints

__all__ = ["parse_latency", "resolve_constraints"]

_LATENCY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|us|µs|s)?\s*$", re.IGNORECASE)
_TO_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def parse_latency(text: str | float) -> float:
    """``"1ms"`` -> 1.0, ``"500us"`` -> 0.5, ``"0.02s"`` -> 20.0 (milliseconds; a bare number is ms).

    >>> parse_latency("500us"), parse_latency("1.5ms"), parse_latency(2)
    (0.5, 1.5, 2.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _LATENCY_RE.match(str(text))
        if m is None:
            raise BadInputError(f"latency {text!r} is not a duration; use e.g. 1ms, 500us, 0.5ms or 0.002s")
        value = float(m.group(1)) * _TO_MS[(m.group(2) or "ms").lower()]
    if not value > 0:
        raise BadInputError(f"latency target must be > 0, got {text!r}; use e.g. 1ms or 500us")
    return value


def resolve_constraints(budget_bytes: int | None, latency_p99: str | float | None,
                        profile: str | Path | None) -> Constraints:
    """Explicit ``--budget`` (parsed by the caller) / ``--latency-p99`` win over the profile's;
    threads/batch from the profile (else 1/1)."""
    dev = load_profile(profile) if profile is not None else None
    return Constraints(
        budget_bytes=parse_budget(budget_bytes) if budget_bytes is not None else (dev.memory_budget if dev else None),
        p99_ms=parse_latency(latency_p99) if latency_p99 is not None else (dev.p99_latency_ms if dev else None),
        threads=dev.threads if dev else 1, batch_size=dev.batch_size if dev else 1,
        profile=dev.name if dev else None, arch=dev.arch if dev else None)
