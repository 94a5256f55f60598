"""Pieces the benchmark scripts share: test AUC read once, logging, writing JSON + Markdown.

The scripts run as ``python benchmarks/NAME.py`` (this folder is then on ``sys.path``).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn


def test_auc(model: nn.Module, data: Any) -> float:
    """Test AUC of ``model`` on ``data``'s test split (a copy in eval mode; read once, after selection)."""
    from ondevice.train import evaluate_ctr

    s = data.split("test")
    return float(evaluate_ctr(copy.deepcopy(model).eval(), s.ids, s.labels)["auc"])


def log(msg: str) -> None:
    """A progress line on stderr (stdout carries the Markdown table)."""
    print(msg, file=sys.stderr, flush=True)


def write_results(out: Path, name: str, res: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """``out/name.json`` (the results) and ``out/name.md`` (their table), written atomically, and
    the table on stdout."""
    from ondevice.io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(res, indent=2, default=str) + "\n")
    text = render(res)
    atomic_write_text(out / f"{name}.md", text)
    print(text)
