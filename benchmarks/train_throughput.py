"""Training throughput and quality: our DeepFM against DeepCTR-Torch's DeepFM.

Question: how many training samples per second does ``ondevice.train`` reach on one
CPU-bound DeepFM, compared with a widely used peer library on the same model, data,
batch size, epochs and thread count, and is the test AUC as good?

Scenarios
  frappe     Frappe (NFM's libFM release in ``../shared/data/frappe/nfm-libfm/``):
             10 fields, DeepFM dim 10, MLP 400x3, batch 1024.
             Target: ours >= 1.3x DeepCTR-Torch samples/s, test AUC >= theirs - 0.002.
  embedding  Embedding-heavy, generated Criteo-like data: 26 fields x 40K ids each
             (power-law frequencies, planted logistic label), dim 16, MLP 400-400,
             batch 1024. Target: >= 3x DeepCTR-Torch, test AUC within 0.002.

Protocol (identical for both libraries)
  * one encoded dataset per scenario (``benchmarks/.cache/``), read by both;
  * each run is a fresh subprocess with ``OMP_NUM_THREADS=2`` and ``torch.set_num_threads(2)``;
    ours runs in this interpreter, DeepCTR-Torch in ``benchmarks/.venv-peers``
    (``benchmarks/setup_peers.sh``); the runs of the two libraries are interleaved, the
    order alternating per repetition, so machine noise hits both alike;
  * same DeepFM: FM + linear + MLP on one shared embedding, ReLU, no dropout, no batch
    norm, no L2, Adam lr 1e-3, the same batch size and number of epochs;
  * the two workers train one epoch at a time, taking turns (order alternating), so load
    bursts from other processes hit both; samples/s is steady state: per epoch of epochs
    2..E, training rows over that epoch's training-loop time (epoch 1, with allocator and
    cache warm-up, and every evaluation are excluded, for both); median and best epoch;
  * test AUC: after every epoch each run scores the validation split; the test split is
    scored with the epoch of best validation AUC. The parent computes every AUC with one
    function (``sklearn.metrics.roc_auc_score``) from the saved probabilities;
  * the ratio is the median over paired epochs (epoch e of ours / epoch e of theirs, run
    back to back); the ratio of the best epochs is reported too. Test AUC: median over
    repetitions.

Run
  bash benchmarks/setup_peers.sh                      # once: the peer's own venv
  python benchmarks/train_throughput.py               # both scenarios, 3 repetitions
  python benchmarks/train_throughput.py --scenario frappe --reps 1 --quick

Results go to ``benchmarks/results/train_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_DATA = REPO.parent / "shared" / "data"
FRAPPE_DIR = SHARED_DATA / "frappe" / "nfm-libfm"
CACHE = HERE / ".cache" / "train_throughput"
RESULTS = HERE / "results"
PEER_PYTHON = HERE / ".venv-peers" / "bin" / "python"

SCENARIOS = {
    "frappe": {
        "title": "Frappe, DeepFM dim 10, MLP 400x3, batch 1024",
        "dim": 10, "mlp": [400, 400, 400], "batch": 1024, "epochs": 10, "target_ratio": 1.3,
    },
    "embedding": {
        "title": "Embedding-heavy: 26 fields x 40K ids, DeepFM dim 16, MLP 400-400, batch 1024",
        "dim": 16, "mlp": [400, 400], "batch": 1024, "epochs": 3, "target_ratio": 3.0,
        "rows": 300_000, "fields": 26, "vocab": 40_000,
    },
}
AUC_TOLERANCE = 0.002
SPLIT_SEED = 2024


# ============================================================== encoded datasets
def _write_encoded(root: Path, field_names: list[str], vocab: list[int], ids: np.ndarray, labels: np.ndarray,
                   *, seed: int, source: str) -> Path:
    """Seeded 80/10/10 split into ``root`` in the encoded layout (schema.json + npy files)."""
    from ondevice.io import atomic_write_json
    from ondevice.schema import Field, Schema

    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    schema = Schema(task="ctr", fields=[Field(name=n, vocab_size=int(v), encoding="identity")
                                        for n, v in zip(field_names, vocab, strict=True)])
    schema.save(tmp / "schema.json")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_tr, n_va = int(len(ids) * 0.8), int(len(ids) * 0.1)
    parts = {"train": order[:n_tr], "val": order[n_tr:n_tr + n_va], "test": order[n_tr + n_va:]}
    for name, rows in parts.items():
        (tmp / name).mkdir()
        np.save(tmp / name / "ids.npy", np.ascontiguousarray(ids[rows], dtype=np.int32))
        np.save(tmp / name / "labels.npy", np.ascontiguousarray(labels[rows], dtype=np.float32))
    atomic_write_json(tmp / "prepare.json", {
        "source": source, "split": f"seeded 80/10/10 permutation, seed {seed}",
        "rows": {k: int(len(v)) for k, v in parts.items()}, "vocab_sizes": [int(v) for v in vocab],
    })
    os.replace(tmp, root)
    return root


def _read_libfm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """libFM lines ``label idx:val ...`` with one active feature per field -> (raw idx [n, F], labels)."""
    rows, labels = [], []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            labels.append(1.0 if float(parts[0]) > 0 else 0.0)
            rows.append(sorted(int(tok.split(":", 1)[0]) for tok in parts[1:]))
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise SystemExit(f"{path}: rows have different feature counts {sorted(widths)}")
    return np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=np.float32)


def prepare_frappe(root: Path) -> Path:
    """Frappe from NFM's libFM files into the encoded layout.

    NFM's libFM release has 10 one-hot fields per row with a global feature index; the
    k-th smallest index of a row is its k-th field (checked: the fields' index ranges do
    not overlap). Each field's values are renumbered 1..n (0 is the OOV row). The train
    file of that release is not in shared/data, so the 57,722 validation + 28,860 test
    rows are pooled and split 80/10/10 with a seeded permutation (seed 2024).
    """
    if (root / "schema.json").is_file():
        return root
    raw, labels = [], []
    for name in ("frappe.validation.libfm.gz", "frappe.test.libfm.gz"):
        r, y = _read_libfm(FRAPPE_DIR / name)
        raw.append(r)
        labels.append(y)
    idx, y = np.concatenate(raw), np.concatenate(labels)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    if np.any(lo[1:] <= hi[:-1]):
        raise SystemExit("Frappe libFM: field index ranges overlap; cannot recover fields by position")
    ids = np.empty_like(idx)
    vocab = []
    for f in range(idx.shape[1]):
        values, inverse = np.unique(idx[:, f], return_inverse=True)
        ids[:, f] = inverse + 1
        vocab.append(len(values) + 1)
    names = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
    if len(names) != idx.shape[1]:
        names = [f"f{i}" for i in range(idx.shape[1])]
    return _write_encoded(root, names, vocab, ids, y, seed=SPLIT_SEED,
                          source=f"{FRAPPE_DIR} (validation + test libFM files pooled)")


def prepare_embedding_heavy(root: Path, rows: int, fields: int, vocab: int, *, seed: int = 7) -> Path:
    """Criteo-like generated data: power-law ids per field, labels from a planted model.

    Field f's value of frequency rank r (1..vocab-1; 0 is OOV) is drawn with probability
    ∝ r^-1.1. logit = b + Σ_{f<8} e_f[v_f] + Σ_{4 pairs} 0.8·a_f[v_f]·a_g[v_g] with
    e ~ N(0, 0.5²), a = ±1 per value; b gives a ~25 % click rate.
    """
    if (root / "schema.json").is_file():
        meta = json.loads((root / "prepare.json").read_text())
        if sum(meta["rows"].values()) == rows and meta["vocab_sizes"] == [vocab] * fields:
            return root
        import shutil

        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab, dtype=np.float64)
    cdf = np.cumsum(ranks ** -1.1)
    cdf /= cdf[-1]
    ids = np.empty((rows, fields), dtype=np.int32)
    for f in range(fields):
        # a random relabelling per field so that frequent ids are not simply the small ones
        relabel = rng.permutation(vocab - 1) + 1
        ids[:, f] = relabel[np.minimum(np.searchsorted(cdf, rng.random(rows)), vocab - 2)]
    logit = np.zeros(rows)
    for f in range(8):
        logit += rng.normal(0, 0.5, size=vocab)[ids[:, f]]
    for f, g in ((0, 1), (2, 9), (10, 11), (12, 20)):
        a_f, a_g = rng.choice([-1.0, 1.0], size=vocab), rng.choice([-1.0, 1.0], size=vocab)
        logit += 0.8 * a_f[ids[:, f]] * a_g[ids[:, g]]
    b = -np.quantile(logit, 0.75) - 0.3
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-(logit + b)))).astype(np.float32)
    return _write_encoded(root, [f"C{i + 1}" for i in range(fields)], [vocab] * fields, ids, labels,
                          seed=SPLIT_SEED, source=f"generated Criteo-like, {rows} rows, seed {seed}")


# ============================================================== workers (subprocesses)
class _Gate:
    """Epoch-level turn taking with the parent: wait for "go" on stdin, report "done" on a pipe.

    The parent lets the two libraries' workers train one epoch at a time, alternately, so a
    burst of load from other processes on a shared machine hits both alike.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def wait(self) -> None:
        if self.fd is not None and sys.stdin.readline().strip() != "go":
            raise SystemExit("parent went away")

    def done(self) -> None:
        if self.fd is not None:
            os.write(self.fd, b"done\n")
            self.wait()


def _load_split(data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(data / name / "ids.npy"), np.load(data / name / "labels.npy")


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def worker_ours(args: argparse.Namespace) -> dict:
    """Train with ``ondevice.train.train`` (the real CLI path) and score test with the best epoch."""
    import torch

    from ondevice.train import TrainConfig, load_checkpoint, predict_ctr, train
    from ondevice.train import trainer as trainer_mod

    _set_threads(args.threads)
    gate = _Gate(args.ctl_fd)
    real_evaluate = trainer_mod.Trainer._evaluate

    def evaluate_then_yield(self, model, data, split, *a, **k):  # after each epoch's validation
        out = real_evaluate(self, model, data, split, *a, **k)
        if split == "val":
            gate.done()
        return out

    trainer_mod.Trainer._evaluate = evaluate_then_yield
    cfg = TrainConfig(model="deepfm", embed_dim=args.dim, mlp_dims=args.mlp, batch_size=args.batch,
                      epochs=args.epochs, patience=args.epochs + 1, seed=args.seed, threads=args.threads, lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        gate.wait()
        res = train(args.data, Path(tmp) / "run", cfg, quiet=True)
        model = load_checkpoint(Path(tmp) / "run" / "model.pt").model
        test_ids, _ = _load_split(args.data, "test")
        probs = predict_ctr(model, test_ids)
    epochs = [{"epoch": h["epoch"], "seconds": h["epoch_seconds"], "samples": round(h["samples_per_s"] * h["epoch_seconds"]),
               "val_auc_own": h["val"]["auc"]} for h in res.history]
    return {"library": "ondevice", "torch": torch.__version__, "threads": torch.get_num_threads(), "epochs": epochs,
            "best_epoch": res.best_epoch, "test_probs": probs.tolist(),
            "params": sum(p.numel() for p in model.parameters())}


def worker_deepctr(args: argparse.Namespace) -> dict:
    """DeepCTR-Torch 0.3.0 DeepFM with its own ``fit`` loop, timed per epoch by a callback."""
    import threading

    import torch
    from sklearn.metrics import roc_auc_score

    start = threading.Thread.start
    threading.Thread.start = lambda self: None  # skip deepctr_torch's import-time PyPI version check (network)
    try:
        import deepctr_torch
        from deepctr_torch.callbacks import Callback
        from deepctr_torch.inputs import SparseFeat, get_feature_names
        from deepctr_torch.models import DeepFM
    finally:
        threading.Thread.start = start

    _set_threads(args.threads)
    gate = _Gate(args.ctl_fd)
    schema = json.loads((args.data / "schema.json").read_text())
    names = [f["name"] for f in schema["fields"]]
    vocab = [int(f["vocab_size"]) for f in schema["fields"]]
    cols = [SparseFeat(n, vocabulary_size=v, embedding_dim=args.dim) for n, v in zip(names, vocab, strict=True)]
    splits = {s: _load_split(args.data, s) for s in ("train", "val", "test")}
    inputs = {s: {n: ids[:, i].astype(np.int64) for i, n in enumerate(get_feature_names(cols))}
              for s, (ids, _) in splits.items()}
    torch.manual_seed(args.seed)
    model = DeepFM(cols, cols, dnn_hidden_units=tuple(args.mlp), l2_reg_linear=0.0, l2_reg_embedding=0.0,
                   l2_reg_dnn=0.0, dnn_dropout=0.0, dnn_use_bn=False, task="binary", device="cpu", seed=args.seed)
    model.compile("adam", "binary_crossentropy")  # torch.optim.Adam(lr=1e-3), as ours
    record: dict = {"epochs": [], "best_val": -1.0, "best_epoch": 0, "test_probs": None}
    n_train = len(splits["train"][0])

    class Timer(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            record["t0"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - record["t0"]
            val = model.predict(inputs["val"], 16384).ravel()
            val_auc = float(roc_auc_score(splits["val"][1], val))
            record["epochs"].append({"epoch": epoch + 1, "seconds": seconds, "samples": n_train, "val_auc_own": val_auc})
            if val_auc > record["best_val"]:
                record["best_val"], record["best_epoch"] = val_auc, epoch + 1
                record["test_probs"] = model.predict(inputs["test"], 16384).ravel().tolist()
            model.train()
            gate.done()

    import contextlib
    import io

    gate.wait()
    with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and sample counts
        model.fit(inputs["train"], splits["train"][1], batch_size=args.batch, epochs=args.epochs, verbose=0,
                  shuffle=True, callbacks=[Timer()])
    return {"library": f"deepctr-torch {deepctr_torch.__version__}", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "epochs": record["epochs"], "best_epoch": record["best_epoch"],
            "test_probs": record["test_probs"], "params": sum(p.numel() for p in model.parameters())}


# ============================================================== parent: orchestration
class _Worker:
    """One library's training run in its own process, driven epoch by epoch."""

    def __init__(self, lib: str, data: Path, spec: dict, args: argparse.Namespace, seed: int) -> None:
        self.lib = lib
        python = sys.executable if lib == "ours" else str(PEER_PYTHON)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            self.out = Path(fh.name)
        read_fd, write_fd = os.pipe()
        cmd = [python, str(Path(__file__).resolve()), "--worker", lib, "--data", str(data), "--out", str(self.out),
               "--dim", str(spec["dim"]), "--mlp", ",".join(map(str, spec["mlp"])), "--batch", str(spec["batch"]),
               "--epochs", str(spec["epochs"]), "--threads", str(args.threads), "--seed", str(seed),
               "--ctl-fd", str(write_fd)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        env["PYTHONPATH"] = str(REPO) if lib == "ours" else ""
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the worker)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     text=True, pass_fds=(write_fd,))
        os.close(write_fd)
        self.ctl = os.fdopen(read_fd, "r")

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_done(self) -> None:
        if self.ctl.readline().strip() != "done":
            self.fail()

    def fail(self) -> None:
        self.proc.wait()
        self.stderr.seek(0)
        raise SystemExit(f"{self.lib} worker failed (exit {self.proc.returncode}):\n{self.stderr.read()[-3000:]}")

    def finish(self) -> dict:
        self.go()
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            self.fail()
        result = json.loads(self.out.read_text())
        self.out.unlink()
        result["wall_seconds"] = time.perf_counter() - self.t0
        return result


def _run_pair(libs: list[str], data: Path, spec: dict, args: argparse.Namespace, rep: int) -> dict[str, dict]:
    """Start one worker per library and let them train epoch by epoch, taking turns."""
    workers = {lib: _Worker(lib, data, spec, args, args.seed + rep) for lib in libs}
    try:
        for epoch in range(spec["epochs"]):
            order = libs if (rep + epoch) % 2 == 0 else libs[::-1]
            for lib in order:
                workers[lib].go()
                workers[lib].wait_done()
        return {lib: w.finish() for lib, w in workers.items()}
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.kill()


def _summarise_run(result: dict, test_labels: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    steady = [e for e in result["epochs"] if e["epoch"] >= 2] or result["epochs"]
    per_epoch = [e["samples"] / e["seconds"] for e in steady]
    return {
        "samples_per_s": statistics.median(per_epoch),
        "steady_epoch_samples_per_s": [round(x, 1) for x in per_epoch],
        "first_epoch_samples_per_s": result["epochs"][0]["samples"] / result["epochs"][0]["seconds"],
        "test_auc": float(roc_auc_score(test_labels, np.asarray(result["test_probs"]))),
        "best_epoch": result["best_epoch"],
        "val_auc_by_epoch": [round(e["val_auc_own"], 5) for e in result["epochs"]],
        "epoch_seconds": [round(e["seconds"], 3) for e in result["epochs"]],
        "wall_seconds": round(result["wall_seconds"], 1),
        "params": result["params"],
        "torch": result["torch"],
        "threads": result["threads"],
        "library": result["library"],
    }


def run_scenario(name: str, args: argparse.Namespace) -> dict | None:
    spec = dict(SCENARIOS[name])
    if args.epochs:
        spec["epochs"] = args.epochs
    if name == "frappe":
        if not FRAPPE_DIR.is_dir():
            print(f"SKIP frappe: {FRAPPE_DIR} is absent (it lives in the project's shared/data)", file=sys.stderr)
            return {"scenario": name, "skipped": f"{FRAPPE_DIR} absent"}
        data = prepare_frappe(CACHE / "frappe")
    else:
        rows = args.rows or spec["rows"]
        spec["rows"] = rows
        data = prepare_embedding_heavy(CACHE / f"criteo_like_{rows}", rows, spec["fields"], spec["vocab"])
    test_labels = np.load(data / "test" / "labels.npy")
    meta = json.loads((data / "prepare.json").read_text())
    runs: dict[str, list[dict]] = {"ours": [], "deepctr": []}
    libs = ["ours"] if args.no_peer else ["ours", "deepctr"]
    for rep in range(args.reps):
        print(f"[{name}] rep {rep + 1}/{args.reps}: {' and '.join(libs)}, {spec['epochs']} epochs taking turns ...",
              file=sys.stderr, flush=True)
        results = _run_pair(libs, data, spec, args, rep)
        for lib in libs:
            summary = _summarise_run(results[lib], test_labels)
            runs[lib].append(summary)
            print(f"[{name}]   {lib}: {summary['samples_per_s'] / 1000:.1f}K samples/s, test AUC {summary['test_auc']:.4f}"
                  f" (best epoch {summary['best_epoch']}, epochs {summary['epoch_seconds']} s)", file=sys.stderr, flush=True)

    def med(lib: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[lib])

    def epochs_of(lib: str) -> list[float]:
        return [x for r in runs[lib] for x in r["steady_epoch_samples_per_s"]]

    out = {"scenario": name, "title": spec["title"], "data": str(data), "rows": meta["rows"], "split": meta["split"],
           "source": meta["source"], "config": {k: spec[k] for k in ("dim", "mlp", "batch", "epochs")},
           "target_ratio": spec["target_ratio"], "auc_tolerance": AUC_TOLERANCE, "runs": runs}
    for lib in runs:
        if runs[lib]:
            out[lib] = {"samples_per_s": statistics.median(epochs_of(lib)), "best_samples_per_s": max(epochs_of(lib)),
                        "test_auc": med(lib, "test_auc"), "test_auc_per_rep": [round(r["test_auc"], 5) for r in runs[lib]]}
    if runs["deepctr"]:
        # epoch e of ours and epoch e of theirs ran back to back: their ratio sees the same machine
        ratios = [o / d for ro, rd in zip(runs["ours"], runs["deepctr"], strict=True)
                  for o, d in zip(ro["steady_epoch_samples_per_s"], rd["steady_epoch_samples_per_s"], strict=True)]
        out["paired_epoch_ratios"] = [round(r, 3) for r in ratios]
        out["ratio"] = statistics.median(ratios)
        out["ratio_of_best"] = out["ours"]["best_samples_per_s"] / out["deepctr"]["best_samples_per_s"]
        auc_gap = out["ours"]["test_auc"] - out["deepctr"]["test_auc"]
        out["auc_gap"] = auc_gap
        auc_ok = auc_gap >= -AUC_TOLERANCE  # "as good": a higher AUC than the peer's also passes
        out["speed_target_met"] = out["ratio"] >= spec["target_ratio"]
        out["auc_target_met"] = bool(auc_ok)
        out["target_met"] = out["speed_target_met"] and out["auc_target_met"]
    return out


def machine_info(threads: int) -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads_used": threads, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def write_markdown(path: Path, report: dict) -> None:
    m = report["machine"]
    lines = [
        "# Training throughput: ondevice vs DeepCTR-Torch",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads_used']} torch threads; "
        f"torch {m['torch']}; Python {m['python']}; {m['date']}.",
        f"Command: `{report['command']}` ({report['reps']} repetitions). The two libraries train one epoch at a "
        "time, taking turns. Samples/s: training loop only, epochs 2..E (epoch 1 and evaluation excluded); "
        "median and best over all those epochs of all repetitions. Ratio: median over the paired epochs "
        "(epoch e of ours / epoch e of DeepCTR-Torch, run back to back). Test AUC: median over repetitions, "
        "epoch chosen on validation AUC.",
        "",
        "| scenario | library | samples/s (median epoch) | samples/s (best epoch) | test AUC | ratio (paired median) "
        "| ratio of bests | target | target met? |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for s in report["scenarios"]:
        if "skipped" in s:
            lines.append(f"| {s['scenario']} | - | skipped: {s['skipped']} | | | | | | |")
            continue
        tgt = f">= {s['target_ratio']}x, AUC >= peer - {s['auc_tolerance']}"
        met = ("yes" if s["target_met"] else
               f"no (speed {'ok' if s['speed_target_met'] else 'missed'}, AUC {'ok' if s['auc_target_met'] else 'missed'})") \
            if "target_met" in s else "n/a"
        o = s["ours"]
        lines.append(f"| {s['scenario']} | ondevice | {o['samples_per_s']:,.0f} | {o['best_samples_per_s']:,.0f} | "
                     f"{o['test_auc']:.4f} | {s.get('ratio', float('nan')):.2f}x | {s.get('ratio_of_best', float('nan')):.2f}x "
                     f"| {tgt} | {met} |")
        if "deepctr" in s:
            d = s["deepctr"]
            lines.append(f"| {s['scenario']} | DeepCTR-Torch 0.3.0 | {d['samples_per_s']:,.0f} | {d['best_samples_per_s']:,.0f} | "
                         f"{d['test_auc']:.4f} | 1.00x | 1.00x | | |")
    lines += ["", "Scenarios:", ""]
    for s in report["scenarios"]:
        if "skipped" in s:
            continue
        c = s["config"]
        lines.append(f"- **{s['scenario']}**: {s['title']}; {c['epochs']} epochs; rows {s['rows']}; {s['split']}; "
                     f"source: {s['source']}. Test AUC per repetition: ours {s['ours']['test_auc_per_rep']}, "
                     f"DeepCTR-Torch {s.get('deepctr', {}).get('test_auc_per_rep')}. "
                     f"Paired epoch ratios: {s.get('paired_epoch_ratios')}.")
    lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=["frappe", "embedding", "all"], default="all")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the scenario's epochs")
    p.add_argument("--rows", type=int, default=None, help="embedding scenario: total generated rows")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, 60K generated rows")
    p.add_argument("--no-peer", action="store_true", help="run ours only (no DeepCTR-Torch venv needed)")
    p.add_argument("--results", type=Path, default=RESULTS)
    # worker mode (internal)
    p.add_argument("--worker", choices=["ours", "deepctr"])
    p.add_argument("--data", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--dim", type=int)
    p.add_argument("--mlp", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--batch", type=int)
    p.add_argument("--ctl-fd", type=int, default=None)
    args = p.parse_args(argv)

    if args.worker:
        result = worker_ours(args) if args.worker == "ours" else worker_deepctr(args)
        args.out.write_text(json.dumps(result))
        return 0

    if args.quick:
        args.epochs = args.epochs or 2
        args.rows = args.rows or 60_000
    if not args.no_peer and not PEER_PYTHON.is_file():
        print(f"peer venv missing: run `bash {HERE / 'setup_peers.sh'}` first (or pass --no-peer)", file=sys.stderr)
        return 2
    names = ["frappe", "embedding"] if args.scenario == "all" else [args.scenario]
    report = {"benchmark": "train_throughput", "machine": machine_info(args.threads), "reps": args.reps,
              "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "scenarios": []}
    for name in names:
        res = run_scenario(name, args)
        if res is not None:
            report["scenarios"].append(res)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "train_throughput.json").write_text(json.dumps(report, indent=2))
    write_markdown(args.results / "train_throughput.md", report)
    print((args.results / "train_throughput.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
