"""AutoFIS benchmark (issue 6): does it find planted pairs, and what does it do to a DeepFM?

(a) Planted data (``ondevice.data.generate_ctr``, libFM format, 8 fields of 20 values, 30K
    rows): ``clear`` plants 3 sign×sign pairs and nothing else; ``with-main-effects`` adds 2
    fields with main effects (the other 6 form the 3 pairs). Precision / recall of the kept
    pairs against the truth file, for FM and DeepFM, ``c="auto"`` (default) and ``c="paper"``.
(b) Frappe (``../shared/data/frappe/nfm-libfm``: validation + test files pooled, seeded
    random 80/10/10 split, as ``compress_quality.py``) and the Criteo 10K head
    (``../shared/data/criteo/criteo_dac_train_head10k.tsv.gz``, ``prepare --format criteo``,
    random 80/10/10): the full DeepFM against AutoFIS retrained on the kept pairs. Test AUC
    (each model selected on validation, test read once), kept pairs / total, artefact bytes,
    onnxruntime p50 latency at batch 1 and 256 (1 thread, the two artefacts interleaved in
    rounds in one process), search seconds. Missing data files are skipped with a message.

(c) Main effects (issue 17): ``ondevice generate --task ctr --rows 200000 --seed S`` (the
    default: criteo format, 13 numeric + 26 categorical fields = 741 pairs, 4 main-effect
    fields, a numeric effect on I1, 2 planted sign × sign pairs), ``prepare --format criteo``,
    seeds 7, 1, 2. The issue's setting: FM and DeepFM (dim 16, MLP 400-400-400), AutoFIS with
    the CLI's defaults (3 search epochs from scratch, batch 1024, Adam 1e-3); precision / recall of
    the kept pairs against the truth file, for the default (centred factors + held-out test) and
    the paper's pair form with the same auto c (``centred=False, test_level=0``, the earlier default).
(d) Step cost: seconds per step (median of 100: 10 rounds of 10 steps of each kind, interleaved,
    after 3 warm-up steps each; 1 thread, batch 1024, the same batches; wall and thread CPU time) of a
    training step of the base model (sum-square FM; Adam, lazy Adam on the tables) against a search step
    (741 gated pairs, centring, BatchNorm, the same optimisers + gRDA on the gates): the fused pair term
    (FM now), the module path with one batched Gram product (DeepFM now) and with two gathers of
    ``[B, P, D]`` (before issue 17), on seed 7's data, with the minor page faults per step; FM's two
    steps also under ``torch.profiler``; one epoch of ``fit_ctr`` (data loading, steps, validation)
    training against searching.

Models: DeepFM dim 10, MLP 64-64 (small on purpose: 2 shared CPU cores; with the usual
400-400-400 the MLP dominates latency and pair removal is invisible), Adam lr 1e-3, batch
1024 (256 on the 8K-row Criteo head), up to 10 epochs with patience 2. AutoFIS: 3 search
epochs (from scratch), retrain up to 10 epochs, same batches. Planted runs: batch 512, lr 5e-3
for the full model and AutoFIS alike.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/autofis.py [--out benchmarks/results]
        [--datasets planted,frappe,criteo10k,main-effects,step-cost]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FRAPPE = SHARED / "frappe" / "nfm-libfm"
CRITEO_HEAD = SHARED / "criteo" / "criteo_dac_train_head10k.tsv.gz"


def prepare_planted(work: Path, n_important: int) -> tuple[Path, set[tuple[int, int]]]:
    from ondevice.data import EncodedDataset, generate_ctr, prepare

    out = work / f"planted-{n_important}"
    truth = generate_ctr(work / f"planted-{n_important}.libfm", 30_000, fields=8, vocab=20, seed=0, format="libfm",
                         n_important=n_important, n_pairs=3, alpha=0.5)
    prepare(work / f"planted-{n_important}.libfm", out, format="libfm", seed=0, force=True)
    names = EncodedDataset(out).schema.field_names
    return out, {tuple(sorted(names.index(n) for n in t["fields"])) for t in truth["interactions"]}


def prepare_real(work: Path, name: str) -> Path | None:
    from ondevice.data import prepare

    if name == "frappe":
        files = [FRAPPE / "frappe.validation.libfm.gz", FRAPPE / "frappe.test.libfm.gz"]
        if not all(f.is_file() for f in files):
            return None
        prepare(files, work / "frappe", format="libfm", split="random", seed=0, force=True)
        return work / "frappe"
    if not CRITEO_HEAD.is_file():
        return None
    prepare([CRITEO_HEAD], work / "criteo10k", format="criteo", split="random", seed=0, force=True)
    return work / "criteo10k"


def train_full(data, name: str, batch_size: int, epochs: int = 10, lr: float = 1e-3):
    from ondevice.models import build_model
    from ondevice.search.retrain import fit_ctr

    torch.manual_seed(0)
    kw = {"mlp_dims": [64, 64]} if name == "deepfm" else {}
    model = build_model(name, data.schema.vocab_sizes, embed_dim=10, **kw)
    t0 = time.perf_counter()
    fit = fit_ctr(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=0, patience=2)
    return model, fit, time.perf_counter() - t0


def test_auc(model, data) -> float:
    from ondevice.train import evaluate_ctr

    s = data.split("test")
    return float(evaluate_ctr(model.eval(), s.ids, s.labels)["auc"])


def latency(files: dict[str, Path], vocab: list[int], rounds: int = 5) -> dict[str, dict[str, float]]:
    """p50 ms per file at batch 1 and 256, 1 thread, the files interleaved over ``rounds``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {k: {} for k in files}
    for batch, calls in ((1, 300), (256, 30)):
        x = np.stack([rng.integers(0, v, size=batch) for v in vocab], axis=1).astype(np.int64)
        samples: dict[str, list[float]] = {k: [] for k in files}
        for s in sessions.values():
            for _ in range(10):
                s.run(None, {"ids": x})
        for _ in range(rounds):
            for k, s in sessions.items():
                for _ in range(calls):
                    t0 = time.perf_counter_ns()
                    s.run(None, {"ids": x})
                    samples[k].append((time.perf_counter_ns() - t0) / 1e6)
        for k in files:
            out[k][f"p50_ms_b{batch}"] = float(np.median(samples[k]))
    return out


def run_planted(work: Path, log) -> list[dict[str, Any]]:
    from ondevice.data import EncodedDataset
    from ondevice.search.interaction import AutoFISSearcher
    from ondevice.train import Checkpoint

    rows = []
    for label, n_imp in (("clear", 0), ("with-main-effects", 2)):
        data_dir, truth = prepare_planted(work, n_imp)
        data = EncodedDataset(data_dir)
        for base in ("fm", "deepfm"):
            full, fit, _ = train_full(data, base, 512, epochs=10, lr=5e-3)  # same Adam as the AutoFIS runs
            for c in ("auto", "paper"):
                t0 = time.perf_counter()
                r = AutoFISSearcher(search_epochs=3, c=c, epochs=10, batch_size=512, lr=5e-3).search(
                    Checkpoint(model=full, schema=data.schema), data, 10**12)
                kept = {tuple(k["pair"]) for k in r.trace[1]["kept"]}
                hit = len(kept & truth)
                row = {"data": label, "base": base, "c": c, "c_value": r.trace[0]["grda"]["c"],
                       "mu": r.trace[0]["grda"]["mu"], "kept": sorted(kept), "planted": sorted(truth),
                       "precision": hit / len(kept) if kept else None, "recall": hit / len(truth),
                       "val_auc_full": fit.val["auc"], "val_auc_autofis": r.val["auc"],
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                log(f"[planted {label} {base} c={c}] kept {len(kept)}/28, precision {row['precision']}, "
                    f"recall {row['recall']:.2f}, val {fit.val['auc']:.4f} -> {r.val['auc']:.4f}")
    return rows


def run_real(work: Path, name: str, log) -> dict[str, Any] | None:
    from ondevice.data import EncodedDataset
    from ondevice.export import export_artefact
    from ondevice.search.interaction import AutoFISSearcher
    from ondevice.train import Checkpoint

    data_dir = prepare_real(work, name)
    if data_dir is None:
        log(f"[{name}] data files absent under {SHARED}; skipped")
        return None
    data = EncodedDataset(data_dir)
    bs = 256 if name == "criteo10k" else 1024
    full, fit, full_s = train_full(data, "deepfm", bs)
    log(f"[{name}] full DeepFM val {fit.val['auc']:.4f} ({full_s:.0f}s)")
    result = AutoFISSearcher(search_epochs=3, epochs=10, batch_size=bs, lr=1e-3).search(
        Checkpoint(model=full, schema=data.schema), data, 10**12)
    kept, total = result.trace[1]["kept_count"], result.trace[1]["candidates"]
    log(f"[{name}] AutoFIS kept {kept}/{total}, val {result.val['auc']:.4f}, search {result.timings['search_s']:.0f}s")
    files, sizes = {}, {}
    for label, model in (("full DeepFM", full), ("AutoFIS DeepFM", result.model)):
        folder = work / f"{name}-{label.split()[0]}"
        export_artefact(Checkpoint(model=model, schema=data.schema), folder, force=True)
        files[label] = folder / "model.onnx"
        sizes[label] = files[label].stat().st_size
    lat = latency(files, list(data.schema.vocab_sizes))
    rows = []
    for label, model, val, secs in (("full DeepFM", full, fit.val, full_s),
                                    ("AutoFIS DeepFM", result.model, result.val, result.timings["total_s"])):
        rows.append({"model": label, "val_auc": val["auc"], "test_auc": test_auc(model, data),
                     "pairs": total if label.startswith("full") else kept, "file_bytes": sizes[label],
                     **lat[label], "seconds": secs})
    return {"dataset": name, "rows": {s: len(data.split(s)) for s in ("train", "val", "test")},
            "fields": len(data.schema.vocab_sizes), "candidate_pairs": total, "kept_pairs": kept,
            "kept": result.trace[1]["kept"], "grda": result.trace[0]["grda"],
            "search_s": result.timings["search_s"], "retrain_s": result.timings["retrain_s"], "models": rows}


MAIN_SEEDS = (7, 1, 2)


def prepare_generated(work: Path, seed: int) -> tuple[Path, set[tuple[int, int]]]:
    """``ondevice generate --task ctr --rows 200000 --seed S`` + ``prepare --format criteo``."""
    from ondevice.data import EncodedDataset, generate_ctr, prepare

    out = work / f"generated-{seed}"
    truth = generate_ctr(work / f"generated-{seed}.tsv", 200_000, seed=seed)
    prepare(work / f"generated-{seed}.tsv", out, format="criteo", seed=0, force=True)
    names = EncodedDataset(out).schema.field_names
    return out, {tuple(sorted(names.index(n) for n in t["fields"])) for t in truth["interactions"]}


def _issue_model(data, base: str):
    from ondevice.models import build_model

    torch.manual_seed(0)
    kw = {"mlp_dims": [400, 400, 400]} if base == "deepfm" else {}
    return build_model(base, data.schema.vocab_sizes, embed_dim=16, **kw)


def run_main_effects(work: Path, log) -> list[dict[str, Any]]:
    from ondevice.data import EncodedDataset
    from ondevice.errors import WeakSignalError
    from ondevice.search.interaction import AutoFISSearcher
    from ondevice.train import Checkpoint

    rows = []
    for seed in MAIN_SEEDS:
        data_dir, truth = prepare_generated(work, seed)
        data = EncodedDataset(data_dir)
        names = data.schema.field_names
        for base in ("fm", "deepfm"):
            for label, kw in (("default", {}), ("paper form, auto c", {"centred": False, "test_level": 0})):
                t0 = time.perf_counter()
                s = AutoFISSearcher(search_epochs=3, epochs=0, **kw)  # retrain skipped: the choice is measured
                try:
                    r = s.search(Checkpoint(model=_issue_model(data, base), schema=data.schema), data, 10**12)
                except WeakSignalError as err:
                    rows.append({"seed": seed, "base": base, "variant": label, "refused": str(err)})
                    continue
                kept = {tuple(k["pair"]) for k in r.trace[1]["kept"]}
                hit = len(kept & truth)
                survivors = sum(1 for p in r.trace[0]["pairs"] if p["alpha"] != 0)
                check = r.trace[0]["signal_check"]
                row = {"seed": seed, "base": base, "variant": label, "kept": sorted(kept), "planted": sorted(truth),
                       "kept_fields": [[names[i], names[j]] for i, j in sorted(kept)], "survivors": survivors,
                       "precision": hit / len(kept) if kept else None, "recall": hit / len(truth),
                       "threshold_z": check["threshold_z"] if check else None,
                       "max_failed_z": check["max_failed_z"] if check else None,
                       "min_kept_z": min((p["heldout_z"] for p in r.trace[0]["pairs"] if tuple(p["pair"]) in kept),
                                         default=None) if check else None,
                       "search_s": r.timings["search_s"], "seconds": time.perf_counter() - t0}
                rows.append(row)
                log(f"[main effects seed {seed} {base} {label}] survivors {survivors}, kept {len(kept)}/741, "
                    f"precision {row['precision']}, recall {row['recall']:.2f}, {row['seconds']:.0f}s")
    return rows


def _old_pair_values(self, emb: torch.Tensor) -> torch.Tensor:
    """The pair values as before issue 17: both factors of every pair gathered, ``[B, P, D]`` each."""
    if self.pair_centre is not None:
        emb = self.pair_centre(emb)
    values = (emb.index_select(1, self.pair_left) * emb.index_select(1, self.pair_right)).sum(dim=2)
    return values if self.pair_norm is None else self.pair_norm(values)


def _step_profile(arms: dict[str, tuple[Any, list[Any], Any]], batches: list[Any], run_step,
                  rounds: int = 3) -> dict[str, dict[str, float]]:
    """Milliseconds per step of each part of each arm's step under ``torch.profiler`` (CPU time, the profiler's
    per-op overhead included, so only the parts' shares are comparable with the timed steps): forward, its
    pair term (FM's fused op), backward, its pair term, ``zero_grad``, each optimiser's step and the ops with
    the most self time; ``rounds`` profiles of each arm, interleaved, the median per part."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    seen: dict[str, list[dict[str, float]]] = {k: [] for k in arms}
    for _ in range(rounds):
        for label, (model, opts, values) in arms.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run_step(model, opts, values, batches, record_function)
            n = len(batches)
            ev = {e.key: e for e in prof.key_averages()}
            part = {k[3:]: e.cpu_time_total / n / 1e3 for k, e in ev.items() if k.startswith("## ")}
            for key, name in (("_GatedGramNorm", "forward: fused pair term"),
                              ("autograd::engine::evaluate_function: _GatedGramNormBackward", "backward: fused pair term")):
                if key in ev:
                    part[name] = ev[key].cpu_time_total / n / 1e3
            part.update({f"op {k} (self)": e.self_cpu_time_total / n / 1e3 for k, e in ev.items() if k.startswith("aten::")})
            seen[label].append(part)
    order = ["forward", "forward: fused pair term", "zero_grad", "backward", "backward: fused pair term"]
    out: dict[str, dict[str, float]] = {}
    for label, parts in seen.items():
        med = {k: float(np.median([p.get(k, 0.0) for p in parts])) for k in set().union(*parts)}
        ops = sorted((k for k in med if k.startswith("op ")), key=lambda k: -med[k])[:8]
        keys = sorted([k for k in med if not k.startswith("op ")], key=lambda k: (order.index(k) if k in order else 9, k))
        out[label] = {k: med[k] for k in keys + ops}
    return out


def _epoch_cost(data: Any, full: Any, search: Any, rounds: int = 3) -> dict[str, float]:
    """Seconds (wall and CPU) of one epoch of ``fit_ctr`` (the searchers' loop: batches from the data, the
    steps, validation AUC at the end) training ``full`` against searching with a fresh copy of ``search``
    (Adam, lazy Adam, gRDA on the gates), ``rounds`` interleaved, the medians: the step ratio with the data
    loading and the evaluation around it."""
    import copy

    from ondevice.search.retrain import fit_ctr
    from ondevice.train.grda import GRDA
    from ondevice.train.optim import make_optimizers

    times: dict[str, list[tuple[float, float]]] = {"train": [], "search": []}
    for _ in range(rounds):
        for label in times:
            model = copy.deepcopy(full if label == "train" else search)
            if label == "train":
                opts = make_optimizers(model, lr=1e-3)
            else:
                gate = model.pair_weight
                gate.requires_grad_(False)
                opts = make_optimizers(model, lr=1e-3)
                gate.requires_grad_(True)
                opts.append(GRDA([gate], lr=1.0, c=0.01, mu=0.8))
            t0, c0 = time.perf_counter(), time.thread_time()
            fit_ctr(model, data, epochs=1, batch_size=1024, seed=0, optimizers=opts, select_best=False, evaluate=True)
            times[label].append((time.perf_counter() - t0, time.thread_time() - c0))
    out = {f"{label}_{kind}": float(np.median([t[i] for t in v])) for label, v in times.items()
           for i, kind in enumerate(("s", "cpu_s"))}
    out["ratio"], out["cpu_ratio"] = out["search_s"] / out["train_s"], out["search_cpu_s"] / out["train_cpu_s"]
    return out


def run_step_cost(work: Path, log, steps: int = 10, rounds: int = 10, warmup: int = 3) -> list[dict[str, Any]]:
    """Seconds per step of the steps, interleaved: ``rounds`` × (``steps`` of each), so that the load of a
    shared machine hits all alike; the median over all timed steps of the wall time and of the thread's CPU
    time (less sensitive to the other jobs of a shared host). FM also gets a profile of its training step and
    its fused search step (:func:`_step_profile`)."""
    import torch.nn.functional as F

    from ondevice.data import EncodedDataset
    from ondevice.models.fm import PairInteraction, all_pairs
    from ondevice.search.interaction.autofis import search_model
    from ondevice.search.retrain import iter_batches
    from ondevice.train.grda import GRDA
    from ondevice.train.optim import make_optimizers

    data_dir = work / f"generated-{MAIN_SEEDS[0]}"
    if not data_dir.is_dir():
        data_dir, _ = prepare_generated(work, MAIN_SEEDS[0])
    data = EncodedDataset(data_dir)
    batches = []
    for x, y in iter_batches(data, "train", 1024, 0, 1):
        batches.append((x, y))
        if len(batches) == steps:
            break

    def run(model, opts, values, chunk, mark=None) -> list[tuple[float, float, int]]:
        """One training step per batch of ``chunk``: (wall s, CPU s, minor page faults) each; ``mark``: the
        profiler's ranges."""
        original = PairInteraction.pair_values
        PairInteraction.pair_values = values  # type: ignore[method-assign]
        part = mark or (lambda _name: contextlib.nullcontext())
        model.train()
        times = []
        try:
            for x, y in chunk:
                t0, c0, f0 = time.perf_counter(), time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
                with part("## forward"):
                    loss = F.binary_cross_entropy_with_logits(model(x), y)
                with part("## zero_grad"):
                    for o in opts:
                        o.zero_grad(set_to_none=True)
                with part("## backward"):
                    loss.backward()
                for o in opts:
                    with part(f"## step {type(o).__name__}"):
                        o.step()
                times.append((time.perf_counter() - t0, time.thread_time() - c0,
                              resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0))
        finally:
            PairInteraction.pair_values = original  # type: ignore[method-assign]
        return times

    rows = []
    for base in ("fm", "deepfm"):
        full = _issue_model(data, base)
        arms: dict[str, tuple[Any, list[Any], Any]] = {"train": (full, make_optimizers(full, lr=1e-3),
                                                                  PairInteraction.pair_values)}
        for label, values in (("fused", PairInteraction.pair_values), ("batched", PairInteraction.pair_values),
                              ("gathered", _old_pair_values)):
            model = search_model(full, all_pairs(full.num_fields), seed=0, warm_start=False, centred=True)
            if label != "fused":  # the module path: centre, pair values, BatchNorm, gates (before the fused op)
                model.pair_sum = functools.partial(PairInteraction.pair_sum, model)
            elif base != "fm":  # the fused op is FM's; DeepFM's search keeps the module path (module docstring)
                continue
            gate = model.pair_weight
            gate.requires_grad_(False)
            adam = make_optimizers(model, lr=1e-3)
            gate.requires_grad_(True)
            arms[label] = (model, [*adam, GRDA([gate], lr=1.0, c=0.01, mu=0.8)], values)
        for model, opts, values in arms.values():
            run(model, opts, values, batches[:warmup])
        samples: dict[str, list[tuple[float, float, int]]] = {k: [] for k in arms}
        for _ in range(rounds):
            for k, (model, opts, values) in arms.items():
                samples[k] += run(model, opts, values, batches)
        wall = {k: float(np.median([w for w, _, _ in v])) for k, v in samples.items()}
        cpu = {k: float(np.median([c for _, c, _ in v])) for k, v in samples.items()}
        faults = {k: float(np.median([f for _, _, f in v])) for k, v in samples.items()}
        out: dict[str, Any] = {"base": base, "train_step_s": wall["train"], "train_step_cpu_s": cpu["train"],
                               "train_step_faults": faults["train"], "timed_steps": steps * rounds}
        for label in ("fused", "batched", "gathered"):
            if label not in samples:
                continue
            out[f"search_step_s_{label}"] = wall[label]
            out[f"ratio_{label}"] = wall[label] / wall["train"]
            out[f"search_step_cpu_s_{label}"] = cpu[label]
            out[f"cpu_ratio_{label}"] = cpu[label] / cpu["train"]
            out[f"search_step_faults_{label}"] = faults[label]
        out["epoch"] = _epoch_cost(data, full, arms[next(k for k in ("fused", "batched") if k in arms)][0])
        if base == "fm":
            out["profile_ms_per_step"] = _step_profile({k: arms[k] for k in ("train", "fused")}, batches, run)
        rows.append(out)
        log(f"[step cost {base}] epoch: search x{out['epoch']['ratio']:.2f} (cpu x{out['epoch']['cpu_ratio']:.2f}); "
            f"train {wall['train'] * 1e3:.1f} ms (cpu {cpu['train'] * 1e3:.1f}), " + ", ".join(
            f"{k} {wall[k] * 1e3:.1f} ms (x{out[f'ratio_{k}']:.2f}; cpu x{out[f'cpu_ratio_{k}']:.2f})"
            for k in ("fused", "batched", "gathered") if k in wall))
    return rows


def render(res: dict[str, Any]) -> str:
    lines = ["# AutoFIS (issue 6)", "", f"Command: `{res['command']}`  ", f"Machine: {res['machine']}; "
             f"torch {res['torch']}; 1 thread; shared 2-core host, times indicative.", "",
             *[f"Section {k} from an earlier run: `{c}`  " for k, c in res.get("carried", {}).items()], "",
             "## (a) Planted pairs (8 fields, 28 candidate pairs, 3 planted)", "",
             "| data | base | c | c value | kept | precision | recall | val AUC full | val AUC AutoFIS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["planted"]:
        p = "–" if r["precision"] is None else f"{r['precision']:.2f}"
        lines.append(f"| {r['data']} | {r['base']} | {r['c']} | {r['c_value']:.2g} | {len(r['kept'])} | {p} | "
                     f"{r['recall']:.2f} | {r['val_auc_full']:.4f} | {r['val_auc_autofis']:.4f} |")
    for d in res["real"]:
        lines += ["", f"## (b) {d['dataset']} ({d['rows']['train']:,} train rows, {d['fields']} fields): "
                  f"kept {d['kept_pairs']} of {d['candidate_pairs']} pairs (c = {d['grda']['c']:.2g}, "
                  f"μ = {d['grda']['mu']}); search {d['search_s']:.0f} s, retrain {d['retrain_s']:.0f} s", "",
                  "| model | pairs | val AUC | test AUC | bytes | p50 b1 (ms) | p50 b256 (ms) |",
                  "|---|---|---|---|---|---|---|"]
        for m in d["models"]:
            lines.append(f"| {m['model']} | {m['pairs']} | {m['val_auc']:.4f} | {m['test_auc']:.4f} | "
                         f"{m['file_bytes']:,} | {m['p50_ms_b1']:.3f} | {m['p50_ms_b256']:.2f} |")
    if res.get("main_effects"):
        lines += ["", "## (c) Main effects and numeric fields: `generate --task ctr --rows 200000` (39 fields, "
                  "741 pairs, 2 planted)", "",
                  "| seed | base | variant | gRDA survivors | kept | precision | recall | min kept z | max failed z | "
                  "threshold z | search s |", "|---|---|---|---|---|---|---|---|---|---|---|"]

        def f(v: Any, fmt: str = ".2f") -> str:
            return "–" if v is None else format(v, fmt)

        for r in res["main_effects"]:
            if "refused" in r:
                lines.append(f"| {r['seed']} | {r['base']} | {r['variant']} | refused: {r['refused']} | | | | | | | |")
                continue
            lines.append(f"| {r['seed']} | {r['base']} | {r['variant']} | {r['survivors']} | {len(r['kept'])} | "
                         f"{f(r['precision'])} | {r['recall']:.2f} | {f(r['min_kept_z'])} | {f(r['max_failed_z'])} | "
                         f"{f(r['threshold_z'])} | {r['search_s']:.0f} |")
        for variant in dict.fromkeys(r["variant"] for r in res["main_effects"]):
            for base in ("fm", "deepfm"):
                sel = [r for r in res["main_effects"] if r["variant"] == variant and r["base"] == base and "refused" not in r]
                if sel:
                    lines.append(f"\n{base}, {variant}: mean precision "
                                 f"{np.mean([r['precision'] or 0.0 for r in sel]):.2f}, mean recall "
                                 f"{np.mean([r['recall'] for r in sel]):.2f} over seeds {', '.join(str(r['seed']) for r in sel)}")
    if res.get("step_cost"):
        steps = res["step_cost"][0]["timed_steps"]
        lines += ["", f"## (d) Step cost (seed 7's data, batch 1024, 1 thread, median of {steps} interleaved steps)", "",
                  "| base | step | wall (ms) | ratio | CPU (ms) | ratio | page faults / step |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["step_cost"]:
            lines.append(f"| {r['base']} | training | {r['train_step_s'] * 1e3:.1f} | 1.00 | "
                         f"{r['train_step_cpu_s'] * 1e3:.1f} | 1.00 | {r['train_step_faults']:.0f} |")
            for label in ("fused", "batched", "gathered"):
                if f"ratio_{label}" not in r:
                    continue
                lines.append(f"| {r['base']} | search, {label} | {r[f'search_step_s_{label}'] * 1e3:.1f} | "
                             f"{r[f'ratio_{label}']:.2f} | {r[f'search_step_cpu_s_{label}'] * 1e3:.1f} | "
                             f"{r[f'cpu_ratio_{label}']:.2f} | {r[f'search_step_faults_{label}']:.0f} |")
        lines += ["", "One epoch of the searchers' loop (`fit_ctr`: 156 steps with the data loading, then validation "
                  "AUC; median of 3 interleaved):", "", "| base | training (s) | search (s) | ratio | CPU ratio |",
                  "|---|---|---|---|---|"]
        for r in res["step_cost"]:
            e = r["epoch"]
            lines.append(f"| {r['base']} | {e['train_s']:.2f} | {e['search_s']:.2f} | {e['ratio']:.2f} | "
                         f"{e['cpu_ratio']:.2f} |")
        lines += ["", "fused (FM's search step now): the gated pair term as one op (`autofis.fused_pair_sum`: Gram in "
                  "[B, F·F] centred in place, batch statistics by gemv, gates and 1/σ folded into one vector, "
                  "closed-form backward, the per-step [B, F·F] tensors reused); batched: the module path with one "
                  "batched Gram product (DeepFM's search step now); gathered: both factors of every pair gathered "
                  "(before issue 17). CPU: the thread's CPU time, less sensitive to the other jobs of the shared host; page "
                  "faults: the median minor faults of a step (a fresh multi-MB tensor is a fresh mmap on glibc; the arms "
                  "share one heap, so a fault-free arm can leave faults to another)."]
        prof = next((r["profile_ms_per_step"] for r in res["step_cost"] if r.get("profile_ms_per_step")), None)
        if prof:
            keys = sorted(dict.fromkeys(k for part in prof.values() for k in part), key=lambda k: k.startswith("op "))
            lines += ["", "FM, profiled (torch.profiler, CPU ms per step, profiler overhead included: compare "
                      "within a column; median of 3 interleaved profiles of 10 steps; ops: self time of each step's eight "
                      "costliest):", "",
                      "| part | " + " | ".join(prof) + " |", "|---|" + "---|" * len(prof)]
            for k in keys:
                lines.append(f"| {k} | " + " | ".join(f"{prof[a][k]:.2f}" if k in prof[a] else "–" for a in prof)
                             + " |")
    for s in res["skipped"]:
        lines += ["", f"{s}: data absent, skipped."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--datasets", default="planted,frappe,criteo10k,main-effects,step-cost")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {msg}", file=sys.stderr, flush=True)

    names = args.datasets.split(",")
    res: dict[str, Any] = {"command": "OMP_NUM_THREADS=1 nice -n 19 python benchmarks/autofis.py " + " ".join(argv or sys.argv[1:]),
                           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                           "torch": torch.__version__, "planted": [], "real": [], "skipped": []}
    with tempfile.TemporaryDirectory(prefix="autofis-bench-") as tmp:
        work = Path(tmp)
        if "planted" in names:
            res["planted"] = run_planted(work, log)
        if "main-effects" in names:
            res["main_effects"] = run_main_effects(work, log)
        if "step-cost" in names:
            res["step_cost"] = run_step_cost(work, log)
        for name in ("frappe", "criteo10k"):
            if name in names:
                d = run_real(work, name, log)
                if d is None:
                    res["skipped"].append(name)
                else:
                    res["real"].append(d)
    res["seconds"] = time.perf_counter() - started
    previous = args.out / "autofis.json"
    if previous.is_file():  # sections this run did not redo keep their figures (and say from which command)
        old = json.loads(previous.read_text())
        for key, parts in (("planted", {"planted"}), ("real", {"frappe", "criteo10k"}),
                           ("main_effects", {"main-effects"}), ("step_cost", {"step-cost"})):
            if not parts & set(names) and old.get(key):
                res[key] = old[key]
                res.setdefault("carried", {})[key] = old.get("carried", {}).get(key, old["command"])
    write_results(args.out, "autofis", res, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
