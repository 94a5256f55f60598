"""``verify_artefact``: prove an artefact computes what its PyTorch model computes.

Golden inputs from the manifest plus *fresh* random inputs (a new seed every run, recorded;
OOV and negative ids included, batch 1 and 256) go through onnxruntime and through the
PyTorch reference model saved next to the artefact (the deployable model, i.e. with the same
stored tables). Reported per case and output: max absolute difference and the tolerance.

Top-K outputs: scores are compared position by position; ids are accepted when every
returned id is a valid, distinct item whose PyTorch score equals the returned score within
the tolerance (items with tied scores may come back in either order); the id-set overlap
with PyTorch's top-k is reported.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ondevice.errors import ArtefactError, ParityError
from ondevice.export import golden as golden_mod
from ondevice.export import raw as raw_mod
from ondevice.export._runner import runner_module
from ondevice.export.lowering import export_module
from ondevice.export.manifest import load_artefact, write_manifest
from ondevice.io import atomic_write_json
from ondevice.outputs import MARKER, is_finished

__all__ = ["verify_artefact"]


def _ctr_case(name: str, x: np.ndarray, ort_out: dict[str, np.ndarray], torch_out: np.ndarray, atol: float) -> dict[str, Any]:
    diff = float(np.max(np.abs(ort_out["probability"].astype(np.float64) - torch_out.astype(np.float64))))
    return {"name": name, "batch": int(x.shape[0]), "max_abs_diff": {"probability": diff}, "atol": atol,
            "passed": bool(diff <= atol)}


def _topk_case(name: str, x: np.ndarray, ort_out: dict[str, np.ndarray], module: Any, io: dict[str, Any],
               atol: float) -> dict[str, Any]:
    ids, scores = ort_out[io["topk"]["ids_output"]], ort_out[io["topk"]["scores_output"]]
    k, n_items = io["topk"]["k"], io["topk"]["num_items"]
    with torch.no_grad():
        ref_ids, ref_scores = (t.numpy() for t in module(torch.from_numpy(x)))
        start = torch.arange(1, n_items, dtype=torch.int64).unsqueeze(1)
        items = module.item_embedding(start).squeeze(1)
        full = (torch.from_numpy(x) @ items.t()).numpy().astype(np.float64)  # [B, N-1]
    score_diff = float(np.max(np.abs(scores.astype(np.float64) - ref_scores.astype(np.float64))))
    valid = bool(np.all((ids >= 1) & (ids < n_items)))
    distinct = all(len(set(row.tolist())) == k for row in ids)
    if valid:
        own = np.take_along_axis(full, ids - 1, axis=1)
        id_score_diff = float(np.max(np.abs(own - scores.astype(np.float64))))
    else:
        id_score_diff = float("inf")
    overlap = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ids, ref_ids, strict=False)]))
    passed = valid and distinct and score_diff <= atol and id_score_diff <= atol
    return {"name": name, "batch": int(x.shape[0]),
            "max_abs_diff": {io["topk"]["scores_output"]: score_diff, "score_of_returned_ids": id_score_diff},
            "id_set_overlap": overlap, "ids_valid_and_distinct": bool(valid and distinct), "atol": atol,
            "passed": bool(passed)}


def verify_artefact(artefact_dir: str | Path, *, seed: int | None = None, batches: tuple[int, ...] = (1, 256),
                    write: bool | None = None) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on golden and fresh inputs; raise ``ParityError`` on a miss.

    Records ``verify.json`` and the ``verify`` entry of ``manifest.json`` (also when the check
    fails, so the report shows the numbers) when ``write`` is True, or by default when the
    folder is writable; a read-only artefact is verified all the same (``result["recorded"]``
    says which). ``seed`` defaults to a fresh random one. Raises ``ArtefactError`` (exit 2)
    for a corrupt, truncated, modified or unfinished artefact (no completion marker, or the
    temp folder of an export that was killed).
    """
    path = Path(artefact_dir)
    if path.is_dir() and not is_finished(path, "export"):
        raise ArtefactError(f"{path} is not a finished artefact (no completion marker {MARKER}, or the temp folder "
                            "of an interrupted export); re-export it")
    art = load_artefact(artefact_dir)
    manifest = art.manifest
    runner = runner_module()
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)
    model = art.load_reference_model().eval()
    module, io = export_module(model, k=(manifest.get("topk") or {}).get("k") or 20)
    if [o["name"] for o in io["outputs"]] != [o["name"] for o in manifest["outputs"]]:
        raise ArtefactError("the reference model's outputs do not match the manifest; re-export")
    atol = float(manifest["tolerance"]["atol"])
    session = runner.make_session(art.model_path, 1)
    in_name = manifest["inputs"][0]["name"]
    out_names = [o["name"] for o in manifest["outputs"]]
    plan = manifest.get("raw_inputs")
    # Each case: the artefact's feeds and the ids the PyTorch reference sees (raw: prepare's encoding).
    feeds_of: dict[str, dict[str, np.ndarray]] = {
        f"golden_{c['name']}": {k: runner.decode_array(v) for k, v in c["inputs"].items()} for c in manifest["golden"]}
    if plan:
        rng = np.random.default_rng(seed)
        feeds_of.update({f"fresh_b{b}": raw_mod.raw_random(art.schema, plan, b, rng) for b in batches})
    else:
        feeds_of.update({name: {in_name: x} for name, x in golden_mod.fresh_inputs(model, seed, batches).items()})

    def ids_of(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return raw_mod.encode_reference(art.schema, plan, feeds) if plan else feeds[in_name]

    cases = []
    started = time.time()
    for name, feeds in feeds_of.items():
        try:
            ort_out = dict(zip(out_names, session.run(out_names, feeds), strict=False))
        except Exception as err:  # noqa: BLE001 - a runtime failure on valid input is a broken artefact
            raise ArtefactError(f"onnxruntime failed on case {name!r} ({str(err).splitlines()[0][:200]})") from None
        x = ids_of(feeds)
        if manifest["task"] == "ctr":
            with torch.no_grad():
                ref = module(torch.from_numpy(x)).numpy()
            cases.append(_ctr_case(name, x, ort_out, ref, atol))
        else:
            cases.append(_topk_case(name, x, ort_out, module, io, atol))
    # The stored expectations must still match the reference model (catches a swapped reference_model.pt).
    for c in manifest["golden"]:
        x = ids_of({k: runner.decode_array(v) for k, v in c["inputs"].items()})
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        outs = out if isinstance(out, tuple) else (out,)
        stored = runner.decode_array(c["outputs"][out_names[-1]])
        if float(np.max(np.abs(outs[-1].numpy().astype(np.float64) - stored))) > atol:
            raise ArtefactError(f"reference_model.pt does not reproduce the manifest's golden outputs ({c['name']}); re-export")
    result = {
        "passed": all(c["passed"] for c in cases),
        "seed": seed,
        "atol": atol,
        "tolerance": manifest["tolerance"],
        "max_abs_diff": {k: max(c["max_abs_diff"].get(k, 0.0) for c in cases) for k in cases[0]["max_abs_diff"]},
        "cases": cases,
        "seconds": time.time() - started,
        "verified_unix": time.time(),
    }
    if write is None:
        write = os.access(art.path, os.W_OK) and os.access(art.path / "manifest.json", os.W_OK)
    result["recorded"] = bool(write)
    if write:
        atomic_write_json(art.path / "verify.json", result)
        manifest["verify"] = {k: result[k] for k in ("passed", "seed", "atol", "max_abs_diff", "verified_unix")}
        write_manifest(art.path, manifest)
    if not result["passed"]:
        bad = next(c for c in cases if not c["passed"])
        worst = max(bad["max_abs_diff"].items(), key=lambda kv: kv[1])
        raise ParityError(f"onnxruntime differs from PyTorch on {bad['name']!r}: {worst[0]} max abs diff {worst[1]:.3g} "
                          f"> atol {atol:.3g} (seed {seed}); see verify.json", max_abs_diff=worst[1], tolerance=atol)
    return result
