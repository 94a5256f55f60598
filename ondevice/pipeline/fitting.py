"""The fit-and-retry loop: search, measure the exported bytes, tighten the margin and retry if over.

Every path that turns a budget into a model goes through :func:`search_fitting` (``compress``
for each (target, method), each of ``auto``'s candidates, ``search interactions|features``),
so all reach the same smallest model and a too-small budget gets the same itemised minimum.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ondevice.data import EncodedDataset
from ondevice.pipeline.measure import onnx_file_bytes
from ondevice.search.base import SearchResult
from ondevice.search.byte_accountant import FORMAT_MARGIN_BYTES, ByteAccountant, VocabularyCost
from ondevice.train.checkpoint import Checkpoint

__all__ = ["MAX_FIT_RETRIES", "search_fitting"]

MAX_FIT_RETRIES = 2


def search_fitting(searcher, ckpt: Checkpoint, data: EncodedDataset, budget: int,
                   overhead: int, work_dir: Path | None = None,
                   mlp: str = "fp32", state_dir: Path | None = None,
                   measure: Callable[[Any], int] = onnx_file_bytes,
                   vocabulary: VocabularyCost | None = None) -> tuple[SearchResult, int, list[dict[str, Any]]]:
    """Search, then measure the exported bytes; tighten the margin and retry if over.

    ``measure``: the file bytes the budget is checked against (``ort_file_bytes`` for a device
    profile that ships ``.ort``, which can be larger than the ONNX file). ``vocabulary``: a raw
    artefact's encoder for a searcher that drops keys (``prunes_vocabulary``): its accountant
    counts it with the ids the model keeps, and the measured bytes include it.

    ``state_dir``: where a delegating searcher (``auto``) keeps finished candidates, one
    sub-folder per margin tried (``compress --resume``).
    """
    margin, attempts = FORMAT_MARGIN_BYTES, []
    for attempt in range(MAX_FIT_RETRIES + 1):
        acc = ByteAccountant(graph_overhead_bytes=overhead, margin_bytes=margin, measure=measure, vocabulary=vocabulary)
        state = state_dir / f"margin-{margin}" if state_dir is not None and searcher.delegates else None
        result = searcher.search(ckpt, data, budget, accountant=acc, work_dir=work_dir, mlp=mlp, state_dir=state)
        file_bytes = acc.file_bytes(result.model)  # exact: a temporary export
        attempts.append({"attempt": attempt, "margin_bytes": margin, "file_bytes": file_bytes})
        if file_bytes <= budget:
            return result, file_bytes, attempts
        # The next margin covers the overshoot, and at least this model's measured format bytes
        # beyond its estimate: a searcher that left slack under its target (discrete choices,
        # RULE) would otherwise pick the same model again, and an .ort file's extra bytes grow
        # with the model (about 3 % for a top-K table), not by a constant.
        unestimated = file_bytes - (acc.file_bytes_estimate(result.model) - margin)
        margin = max(margin + file_bytes - budget, unestimated) + 1024
    return result, file_bytes, attempts  # export_artefact will refuse it (exit 3)
