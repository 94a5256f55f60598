"""``verify_artefact``: prove an artefact computes what its PyTorch model computes.

Golden inputs from the manifest plus *fresh* random inputs (a new seed every run, recorded;
OOV and negative ids included, batch 1 and 256) go through onnxruntime and through the
PyTorch reference model saved next to the artefact (the deployable model, i.e. with the same
stored tables). Reported per case and output: max absolute difference and the tolerance.

Top-K outputs (every case but the golden ``batch1`` passes seen items in ``exclude_items``):
scores are compared position by position; ids are accepted when every returned id is a
valid, distinct, not excluded item whose PyTorch score equals the returned score within the
tolerance (items with tied scores may come back in either order), and ``-1`` fills only the
slots beyond the items left; the id-set overlap with PyTorch's top-k is reported.
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
from ondevice.export.lowering import TOPK_EXCLUDE, TOPK_INPUT, export_module
from ondevice.export.manifest import load_artefact, write_manifest
from ondevice.io import atomic_write_json
from ondevice.outputs import MARKER, is_finished

__all__ = ["verify_artefact"]


def _ctr_case(name: str, x: np.ndarray, ort_out: dict[str, np.ndarray], torch_out: np.ndarray, atol: float) -> dict[str, Any]:
    diff = float(np.max(np.abs(ort_out["probability"].astype(np.float64) - torch_out.astype(np.float64))))
    return {"name": name, "batch": int(x.shape[0]), "max_abs_diff": {"probability": diff}, "atol": atol,
            "passed": bool(diff <= atol)}


def _topk_case(name: str, feeds: dict[str, np.ndarray], ort_out: dict[str, np.ndarray], module: Any,
               io: dict[str, Any], atol: float, runner: Any) -> dict[str, Any]:
    ids, scores = ort_out[io["topk"]["ids_output"]], ort_out[io["topk"]["scores_output"]]
    k, n_items = io["topk"]["k"], io["topk"]["num_items"]
    x = feeds[TOPK_INPUT]
    exclude = feeds.get(TOPK_EXCLUDE, np.zeros((len(x), 0), dtype=np.int64))
    with torch.no_grad():
        ref_ids, ref_scores = (t.numpy() for t in module(torch.from_numpy(x), torch.from_numpy(exclude)))
        full = module.scores(torch.from_numpy(x)).numpy().astype(np.float64)  # [B, N]: column = item id
    full[:, 0] = -np.inf  # the OOV item
    seen = [set(row[(row > 0) & (row < n_items)].tolist()) for row in exclude]
    for r, row in enumerate(seen):
        full[r, sorted(row)] = -np.inf
    diff = runner.abs_diff
    score_diff = float(np.max(diff(scores, ref_scores))) if scores.size else 0.0
    returned = ids >= 1
    valid = bool(np.all(returned & (ids < n_items) | (ids == -1) & np.isneginf(scores)))
    distinct = all(len(set(row[row >= 1].tolist())) == int((row >= 1).sum()) for row in ids)
    leaked = sum(len(set(row.tolist()) & s) for row, s in zip(ids, seen, strict=True))
    if valid:
        own = np.take_along_axis(full, np.where(returned, ids, 0), axis=1)
        id_score_diff = float(np.max(np.where(returned, diff(own, scores), 0.0))) if scores.size else 0.0
    else:
        id_score_diff = float("inf")
    # -1 slots only when fewer than k items are left after the exclusion
    filled = all(int((row >= 1).sum()) == min(k, n_items - 1 - len(s)) for row, s in zip(ids, seen, strict=True))
    overlap = float(np.mean([len(set(p.tolist()) & set(q.tolist())) / k for p, q in zip(ids, ref_ids, strict=False)]))
    passed = valid and distinct and filled and leaked == 0 and score_diff <= atol and id_score_diff <= atol
    return {"name": name, "batch": int(x.shape[0]), "excluded_per_row": int(exclude.shape[1]),
            "max_abs_diff": {io["topk"]["scores_output"]: score_diff, "score_of_returned_ids": id_score_diff},
            "id_set_overlap": overlap, "ids_valid_and_distinct": bool(valid and distinct),
            "excluded_items_returned": int(leaked), "atol": atol, "passed": bool(passed)}


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
    if manifest["task"] == "topk" and TOPK_EXCLUDE not in {i["name"] for i in manifest["inputs"]}:
        raise ArtefactError("this top-K artefact predates the exclude_items input; re-export it")
    # Each case: the artefact's feeds and the ids the PyTorch reference sees (raw: prepare's encoding).
    feeds_of: dict[str, dict[str, np.ndarray]] = {
        f"golden_{c['name']}": {k: runner.decode_array(v) for k, v in c["inputs"].items()} for c in manifest["golden"]}
    if plan:
        rng = np.random.default_rng(seed)
        feeds_of.update({f"fresh_b{b}": raw_mod.raw_random(art.schema, plan, b, rng) for b in batches})
    elif manifest["task"] == "topk":
        fresh = golden_mod.fresh_inputs(model, seed, batches)
        feeds_of.update(golden_mod.topk_golden_feeds(module, fresh, (TOPK_INPUT, TOPK_EXCLUDE), io["topk"]["num_items"],
                                                     seed=seed, exclude_most=False))  # in the golden cases already
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
            cases.append(_topk_case(name, feeds, ort_out, module, io, atol, runner))
    # The stored expectations must still match the reference model (catches a swapped reference_model.pt).
    for c in manifest["golden"]:
        feeds = {k: runner.decode_array(v) for k, v in c["inputs"].items()}
        args = [feeds[i["name"]] for i in io["inputs"]] if manifest["task"] == "topk" else [ids_of(feeds)]
        with torch.no_grad():
            out = module(*(torch.from_numpy(a) for a in args))
        outs = out if isinstance(out, tuple) else (out,)
        stored, now = runner.decode_array(c["outputs"][out_names[-1]]), outs[-1].numpy().astype(np.float64)
        if now.size and float(np.max(runner.abs_diff(now, stored))) > atol:
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
