"""``compress --time-limit L``: one wall-clock plan for the whole call (issue 13, point 4).

The limit is per target (budget or device profile) and counts from the start of the call:
target ``i`` (0-based) of the call must be done ``(i + 1)·L`` seconds after ``compress``
started, so loading, the full model's validation pass and everything after a search count.
Its ``auto`` search gets what is left of that window minus a reserve for what follows it:

* ``post_s``: export, verify and profile of the chosen model, ``3·e + 4`` s where ``e`` is
  the measured export of the full model (at most a quarter of ``L``);
* ``eval_s``: its test evaluation through onnxruntime, and in the first window also
  ``full_eval_s``, the full model's test pass: the full model's timed validation pass scaled
  by the number of test users (top-K) or rows (CTR) over the validation ones.

A search always gets at least :data:`MIN_SEARCH_SHARE` of ``L`` (so a short limit still
yields a model). Under a limit, a top-K test split with more than :data:`TEST_MAX_USERS`
users is evaluated on a seeded sample of that many users (the same sample for the full
model and every artefact; the summary states it): a fixed size, so the same command reports
the same metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MIN_SEARCH_SHARE", "TEST_MAX_USERS", "WallPlan", "split_size"]

#: Test users read under ``--time-limit`` (top-K): a seeded sample above this.
TEST_MAX_USERS = 10_000
#: The smallest share of one window a search is given, whatever the reserve.
MIN_SEARCH_SHARE = 0.2


def split_size(data: Any, split: str) -> int:
    """Users (top-K: what a full-ranking pass costs per) or rows (CTR) of a split."""
    ids = data.split(split).ids
    if data.task == "topk":
        return int(len(np.unique(np.asarray(ids[:, 0]))))
    return int(len(ids))


@dataclass
class WallPlan:
    """Deadlines of one ``compress`` call under ``--time-limit`` (module docstring)."""

    limit_s: float | None
    started: float = field(default_factory=time.monotonic)
    post_s: float = 0.0
    eval_s: float = 0.0
    full_eval_s: float = 0.0

    @classmethod
    def estimate(cls, limit_s: float | None, *, started: float, export_s: float, val_s: float, val_size: int,
                 test_size: int) -> WallPlan:
        """The plan from the measured export (``export_s``) and full validation pass (``val_s`` over ``val_size``)."""
        if limit_s is None:
            return cls(None, started)
        post = min(0.25 * limit_s, 3 * export_s + 4.0)
        per = val_s * test_size / max(1, val_size)
        return cls(limit_s, started, post_s=post, eval_s=per, full_eval_s=per)

    def search_limit(self, index: int) -> float | None:
        """Seconds the search of target ``index`` may take from now (``None``: no limit)."""
        if self.limit_s is None:
            return None
        end = self.started + (index + 1) * self.limit_s
        reserve = self.post_s + self.eval_s + (self.full_eval_s if index == 0 else 0.0)
        return max(end - time.monotonic() - reserve, MIN_SEARCH_SHARE * self.limit_s)

    def to_dict(self) -> dict[str, Any]:
        return {"limit_s": self.limit_s, "reserve_post_search_s": round(self.post_s, 3),
                "reserve_test_eval_s": round(self.eval_s, 3), "reserve_full_test_eval_s": round(self.full_eval_s, 3),
                "rule": "target i ends (i+1)*limit after the call started; its search gets the rest minus the reserves"}
