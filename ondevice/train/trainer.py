"""``Trainer``: train one model on one encoded dataset into a run folder (``ondevice train``).

The epochs, early stopping and hooks are the shared loop's (``train.loop.fit``); the trainer
brings the batches, the loss, the checkpoints (``model.pt`` at each best epoch, ``last.pt``
every epoch for ``--resume``) and the test evaluation of the chosen epoch.

* CTR: binary cross-entropy on logits; validation AUC (higher is better) drives early
  stopping; logloss reported too.
* Top-K: BPR loss with one uniformly sampled negative per observed interaction;
  validation Recall@K with full ranking that excludes each user's training items.

Optimisation (``train.optim``): Adam on dense parameters (torch's fused kernel where available);
embedding tables with row-sparse gradients use ``LazyAdam``, ``torch.optim.SparseAdam``'s maths and
state with a faster step (a step touches only the rows in the batch, as in TF's LazyAdam).
This is the main reason we train embedding-heavy models several times faster than
libraries that update every row of every table on every step. An optional L2 penalty
(``l2``) applies to the embedding rows of each batch.

Hot path (see ``benchmarks/train_throughput.py``): a training split that fits in memory is
copied once per run into an int64 tensor and batches are gathered with ``index_select``
(``train.batches``); the running loss stays on the device (no host sync per step); glibc is
asked to keep freed tensor memory (``train.allocator``) so steps do not page-fault fresh
activations.

Around it: ``train.config`` (``TrainConfig`` and the defaults), ``train.progress`` (the bar),
``train.resume`` (``--resume`` checks), ``train.evaluate`` (metrics on a split).

Reproducibility: the shuffle of epoch e is drawn from ``numpy.random.default_rng([seed, e])``
and torch's RNG is re-seeded with ``seed + e`` at the start of each epoch, so an interrupted
run resumed from ``last.pt`` ends with the same weights as an uninterrupted one.

Distributed (``train.distributed``): when started by ``torchrun`` (``WORLD_SIZE > 1``), the model is wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA). DDP cannot all-reduce row-sparse
gradients, so distributed runs train embedding tables with dense gradients and Adam
(``sparse_embeddings=False`` gives a single process the same optimiser, for comparison). Every rank sees a disjoint shard
of each epoch's shuffled order with ``batch_size / world_size`` rows per step, so the
global batch and the averaged gradient match a single-process run. Every rank evaluates
the full validation split (the models are identical), so they agree on early stopping
without extra communication; rank 0 alone writes files.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ondevice import __version__
from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError, CheckpointError, OutputExistsError
from ondevice.io import atomic_write_json, check_writable_parent
from ondevice.models import RecModel, build_model, model_from_description
from ondevice.outputs import (
    OutputLock,
    check_out_vs_inputs,
    check_replaceable,
    publish,
    write_marker,
)
from ondevice.train.allocator import tune_cpu_allocator
from ondevice.train.batches import ctr_batch_count, epoch_order, in_memory_ctr, iter_ctr_batches
from ondevice.train.checkpoint import load_raw, save_checkpoint
from ondevice.train.config import CTR_MODELS, TOPK_MODELS, TrainConfig
from ondevice.train.distributed import DistInfo, init_distributed, wrap_distributed
from ondevice.train.evaluate import evaluate_ctr, evaluate_topk, popularity_model
from ondevice.train.loop import EpochStats, LoopState, StepInfo, fit
from ondevice.train.optim import lazy_tables, make_optimizers
from ondevice.train.progress import Progress
from ondevice.train.resume import check_resume

__all__ = ["TrainResult", "Trainer", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]]
    train_seconds: float
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# A top-K model whose validation metric is below this multiple of the popularity baseline's
# is reported with a warning (issue 12: "beats popularity by a wide margin").
POPULARITY_MARGIN = 1.5


def _metrics_text(split: str, metrics: dict[str, Any]) -> str:
    """One clause for a progress line: ``test auc 0.7480, logloss 0.4712 (20,000 rows)``."""
    if not metrics:
        return f"no {split} split"
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    notes = [f"{v:,} {k}" if isinstance(v, int) else str(v) for k, v in metrics.items() if not isinstance(v, float)]
    return f"{split} {scores}" + (f" ({', '.join(notes)})" if notes else "")


def _check_table_memory(vocab_sizes: list[int], dim: int) -> None:
    """Refuse before allocating embedding tables (+ two Adam moments) larger than this machine's memory."""
    rows = sum(int(v) for v in vocab_sizes)
    need = rows * (dim + 1) * 4 * 3
    try:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > avail:
        raise BadInputError(f"the embedding tables need about {need / 2**30:,.1f} GiB ({rows:,} rows x {dim} dims with "
                            f"Adam state), more than this machine's {avail / 2**30:,.1f} GiB; hash the large fields "
                            "(prepare --hash FIELD=N) or raise --min-count")


@dataclass
class _Run:
    """Everything one ``Trainer._fit`` call works with, set up once and read by its steps."""

    data: EncodedDataset
    dir: Path  # the ``.partial`` run folder being written
    device: torch.device
    dist: DistInfo
    model: RecModel
    train_model: torch.nn.Module  # ``model``, or its DistributedDataParallel wrapper
    optimizers: list[torch.optim.Optimizer]
    progress: Progress
    metric: str  # the validation metric early stopping selects on
    data_identity: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    loop: LoopState = field(default_factory=LoopState)
    train_seconds: float = 0.0
    topk: dict[str, Any] | None = None  # top-K: train/val/test pairs and the item count
    train_rows: int = 0
    train_ids: Any = None  # CTR: the training split (int64 tensors when in memory)
    train_labels: Any = None
    steps_per_epoch: int = 0


class Trainer:
    """Train one model on one encoded dataset into a run folder.

    Examples
    --------
    >>> result = Trainer(TrainConfig(model="deepfm", epochs=2)).fit("data/", "runs/deepfm")  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, *, quiet: bool = False,
                 on_epoch: Callable[[int, float], bool] | None = None) -> None:
        config.validate()
        self.config = config
        self.quiet = quiet
        # on_epoch(epoch, validation metric) -> True stops training (``tune``'s pruning); the
        # best epoch so far is kept and tested as after early stopping
        self.on_epoch = on_epoch

    # ------------------------------------------------------------------ setup
    def _build_model(self, data: EncodedDataset) -> RecModel:
        c = self.config
        task_models = CTR_MODELS if data.task == "ctr" else TOPK_MODELS
        if c.model not in task_models:
            raise BadInputError(
                f"model {c.model!r} does not fit the dataset's task {data.task!r}; use one of: {', '.join(task_models)}"
            )
        torch.manual_seed(c.seed)
        kwargs: dict[str, Any] = {"embed_dim": c.embed_dim}
        if c.model in ("deepfm", "widedeep", "deepfwfm", "dcn"):
            kwargs.update(mlp_dims=list(c.mlp_dims), dropout=c.dropout, batch_norm=c.batch_norm)
        if c.model == "dcn":
            kwargs["cross_layers"] = c.cross_layers
        _check_table_memory(data.schema.vocab_sizes, c.embed_dim)
        return build_model(c.model, data.schema.vocab_sizes, **kwargs)

    def _optimizers(self, model: RecModel) -> list[torch.optim.Optimizer]:
        c = self.config
        return make_optimizers(model, lr=c.lr, weight_decay=c.weight_decay, embedding_lr=c.embedding_lr)

    # ------------------------------------------------------------------ main
    def fit(self, data_dir: str | Path, out_dir: str | Path, *, resume: bool = False, force: bool = False) -> TrainResult:
        """Train, early-stop on validation, evaluate test once, write the run folder.

        While training, files go to ``<out_dir>.partial/``; it is renamed to ``out_dir`` when
        the run completes, so an interrupted run never looks finished. ``resume=True``
        continues from ``<out_dir>.partial/last.pt`` (or a finished run's ``last.pt``).
        """
        c = self.config
        out_dir = Path(os.path.abspath(out_dir))  # '.' and '..' have no name to add '.partial' to
        partial = out_dir.with_name(out_dir.name + ".partial")
        data = EncodedDataset(data_dir)
        data.check_trainable()
        dist_info = init_distributed(c.device)
        device = torch.device(c.device if not c.device.startswith("cuda") or not dist_info.enabled else f"cuda:{dist_info.local_rank}")
        if c.threads:
            torch.set_num_threads(c.threads)
        if dist_info.enabled and c.batch_size % dist_info.world_size:
            raise BadInputError(f"--batch-size {c.batch_size} is not divisible by the {dist_info.world_size} processes")

        # --- where we write, and where we resume from (rank 0 holds the output lock throughout)
        check_out_vs_inputs(out_dir, [data_dir])
        check_out_vs_inputs(partial, [data_dir])
        lock = OutputLock(out_dir) if dist_info.is_main else None
        if lock is not None:
            check_writable_parent(out_dir)
            lock.acquire()
        try:
            return self._fit_locked(data, out_dir, partial, device, dist_info, resume=resume, force=force)
        finally:
            if lock is not None:
                lock.release()

    def _fit_locked(self, data: EncodedDataset, out_dir: Path, partial: Path, device: torch.device,
                    dist_info: DistInfo, *, resume: bool, force: bool) -> TrainResult:
        state: dict[str, Any] | None = None
        existed = os.path.lexists(out_dir)
        if resume:
            src = partial if (partial / "last.pt").is_file() else out_dir
            if not (src / "last.pt").is_file():
                raise CheckpointError(f"nothing to resume: neither {partial}/last.pt nor {out_dir}/last.pt exists; start without --resume")
            if existed:
                check_replaceable(out_dir, "train", True)
            state = load_raw(src / "last.pt")
            check_resume(state, data, self.config, src / "last.pt")
            if dist_info.is_main and src == out_dir:
                partial.mkdir(parents=True, exist_ok=True)
                for f in out_dir.iterdir():
                    if f.is_file():
                        shutil.copy2(f, partial / f.name)
        else:
            check_replaceable(out_dir, "train", force, hint=" or --resume to continue it")
            if (partial / "last.pt").is_file() and not force:
                raise OutputExistsError(f"{partial} holds an interrupted run; pass --resume to continue it "
                                        "or --force to start over")
            if dist_info.is_main:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                data.schema.save(partial / "schema.json")
        if dist_info.enabled:
            dist.barrier()

        try:
            result = self._fit(data, partial, device, dist_info, state)
        except BaseException:
            # keep a partial folder only if it holds something to resume from
            if dist_info.is_main and not (partial / "last.pt").is_file():
                shutil.rmtree(partial, ignore_errors=True)
            raise
        if dist_info.is_main:
            write_marker(partial, "train")
            publish(partial, out_dir, kind="train", force=force or resume, existed=existed)
        if dist_info.enabled:
            dist.barrier()
        result.run_dir = out_dir
        return result

    def _fit(self, data: EncodedDataset, run: Path, device: torch.device, dist_info: DistInfo,
             state: dict[str, Any] | None) -> TrainResult:
        """Set up the run, train it on the shared loop (``train.loop.fit``), test the best epoch once."""
        if device.type == "cpu":
            tune_cpu_allocator()
        model = self._model_for_run(data, state, device, dist_info)
        ctx = _Run(data=data, dir=run, device=device, dist=dist_info, model=model,
                   train_model=wrap_distributed(model, device, dist_info), optimizers=self._optimizers(model),
                   progress=Progress(not self.quiet and dist_info.is_main), metric=self._metric_name(data.task),
                   data_identity=data.identity())  # recorded in last.pt: --resume checks it is the same data
        self._resume_from(ctx, state)
        self._prepare_batches(ctx)
        c = self.config
        fit(model, ctx.optimizers, batches=lambda epoch: self._batches(ctx, epoch),
            loss=lambda batch: self._loss(ctx, batch), epochs=c.epochs, seed=c.seed,
            evaluate=lambda: self._evaluate(model, data, "val", device, ctx.topk), metric=ctx.metric,
            patience=c.patience, state=ctx.loop, max_steps_per_epoch=c.max_steps_per_epoch,
            on_step=self._progress_bar(ctx) if ctx.progress.live else None,
            on_epoch=lambda stats, _: self._end_epoch(ctx, stats), device=device)
        return self._test_best(ctx)

    # ------------------------------------------------------------------ run setup
    def _model_for_run(self, data: EncodedDataset, state: dict[str, Any] | None, device: torch.device,
                       dist_info: DistInfo) -> RecModel:
        """A new model, or the checkpoint's when resuming; tables set to lazy or dense Adam; on ``device``."""
        if state is not None:
            model = model_from_description(state["model"])
            model.load_state_dict(state["state_dict"])
        else:
            model = self._build_model(data)
        if dist_info.enabled or not lazy_tables(self.config.sparse_embeddings, model):
            # DDP cannot reduce row-sparse gradients (NCCL not at all, gloo not mixed with
            # dense buckets): distributed runs train the tables with dense gradients + Adam.
            for layer in model.embedding_layers().values():
                if hasattr(layer, "sparse"):
                    layer.sparse = False
        return model.to(device)

    def _metric_name(self, task: str) -> str:
        """The validation metric early stopping selects on: AUC, Recall@K or (sampled) HR@K."""
        c = self.config
        if task == "ctr":
            return "auc"
        return f"hr@{c.k}" if c.eval_protocol == "sampled" else f"recall@{c.k}"

    def _resume_from(self, ctx: _Run, state: dict[str, Any] | None) -> None:
        """Restore the optimisers, history, early-stopping state and seconds of ``last.pt``'s run."""
        if state is None:
            return
        ts = state["extra"]["trainer_state"]
        for opt, sd in zip(ctx.optimizers, ts["optimizers"], strict=True):
            opt.load_state_dict(sd)
        ctx.history = ts["history"]
        ctx.loop = LoopState(epoch=ts["epoch"], best_metric=ts["best_metric"], best_epoch=ts["best_epoch"],
                             bad_epochs=ts["bad_epochs"])
        ctx.train_seconds = ts["train_seconds"]

    def _prepare_batches(self, ctx: _Run) -> None:
        """Load the training split once: CTR ids/labels (in memory when they fit), top-K pairs."""
        c, data = self.config, ctx.data
        if data.task == "ctr":
            ctx.train_rows = len(data.split("train"))
            ctx.train_ids, ctx.train_labels = in_memory_ctr(data.split("train"))
        else:
            ctx.topk = self._topk_context(data)
            ctx.train_rows = len(ctx.topk["train"])
        if data.task == "ctr":
            n_batches = ctr_batch_count(ctx.train_rows, c.batch_size, ctx.dist.world_size)
        else:
            n_batches = ctx.train_rows // c.batch_size if ctx.dist.enabled else math.ceil(ctx.train_rows / c.batch_size)
        m = c.max_steps_per_epoch
        ctx.steps_per_epoch = min(n_batches, m) if m else n_batches

    def _topk_context(self, data: EncodedDataset) -> dict[str, Any]:
        train = np.asarray(data.split("train").ids, dtype=np.int64)
        n_items = data.schema.vocab_sizes[1]
        return {"train": train, "n_items": n_items,
                "val": np.asarray(data.split("val").ids) if data.has_split("val") else None,
                "test": np.asarray(data.split("test").ids) if data.has_split("test") else None}

    # ------------------------------------------------------------------ one epoch
    def _batches(self, ctx: _Run, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's share of epoch ``epoch``'s batches: CTR ``(ids, labels)``, top-K ``(users, pos, neg)``."""
        c = self.config
        order = epoch_order(ctx.train_rows, c.seed, epoch)
        if ctx.data.task == "ctr":
            return iter_ctr_batches(ctx.train_ids, ctx.train_labels, order, c.batch_size, ctx.dist, ctx.device)
        return self._bpr_batches(ctx, epoch, order)

    def _bpr_batches(self, ctx: _Run, epoch: int, order: np.ndarray) -> Iterator[tuple[torch.Tensor, ...]]:
        """(users, positives, negatives) batches; one uniform negative per interaction (BPR)."""
        c, dist_info, pairs = self.config, ctx.dist, ctx.topk["train"]
        negatives = np.random.default_rng([c.seed, epoch, 1]).integers(1, ctx.topk["n_items"], size=len(pairs))
        n_batches = len(order) // c.batch_size if dist_info.enabled else math.ceil(len(order) / c.batch_size)
        per_rank = c.batch_size // dist_info.world_size
        for b in range(n_batches):
            rows = order[b * c.batch_size : (b + 1) * c.batch_size]
            if dist_info.enabled:
                rows = rows[dist_info.rank * per_rank : (dist_info.rank + 1) * per_rank]
            yield (torch.from_numpy(pairs[rows, 0]).to(ctx.device), torch.from_numpy(pairs[rows, 1]).to(ctx.device),
                   torch.from_numpy(negatives[rows]).to(ctx.device))

    def _loss(self, ctx: _Run, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int]:
        """A batch's mean loss and rows: BCE on logits (CTR) or BPR (top-K), plus the L2 on its rows."""
        l2 = self.config.l2
        if ctx.data.task == "ctr":
            x, y = batch
            loss = F.binary_cross_entropy_with_logits(ctx.train_model(x), y)
            if l2:
                loss = loss + l2 * ctx.model.embedding(x).pow(2).sum() / len(x)
            return loss, len(x)
        users, pos, neg = batch
        n = len(users)
        scores = ctx.train_model(torch.cat([users, users]), torch.cat([pos, neg]))
        loss = -F.logsigmoid(scores[:n] - scores[n:]).mean()
        if l2:
            model = ctx.model
            reg = model.user_vectors(users).pow(2).sum() + model.item_vectors(pos).pow(2).sum() + model.item_vectors(neg).pow(2).sum()
            loss = loss + l2 * reg / (2 * n)
        return loss, n

    def _progress_bar(self, ctx: _Run) -> Callable[[StepInfo], None]:
        """The loop's ``on_step``: the live bar (every 0.5 s and at the epoch's last step)."""
        c, progress = self.config, ctx.progress

        def show(info: StepInfo) -> None:
            if progress.due() or info.step == ctx.steps_per_epoch:
                progress.update(info.epoch, c.epochs, info.step, ctx.steps_per_epoch,
                                info.samples / (time.perf_counter() - info.epoch_started),
                                float(info.loss_sum) / info.samples)

        return show

    def _end_epoch(self, ctx: _Run, stats: EpochStats) -> bool:
        """The loop's ``on_epoch``: history, progress line, checkpoints; ``self.on_epoch`` may stop the run."""
        c, epoch, val = self.config, stats.epoch, stats.val
        entry = {"epoch": epoch, "train_loss": stats.train_loss,
                 "samples_per_s": stats.samples * ctx.dist.world_size / max(stats.seconds, 1e-9),
                 "epoch_seconds": stats.seconds, "val": val}
        ctx.history.append(entry)
        ctx.train_seconds += stats.seconds
        ctx.progress.line(
            f"epoch {epoch}/{c.epochs}: loss {stats.train_loss:.4f}, val {ctx.metric} {val[ctx.metric]:.4f}"
            f"{' (best)' if stats.improved else ''}, {entry['samples_per_s'] / 1000:.1f}K samples/s"
        )
        if ctx.dist.is_main:
            self._save_epoch(ctx, epoch, val, improved=stats.improved)
        if ctx.dist.enabled:
            dist.barrier()
        return self.on_epoch is not None and bool(self.on_epoch(epoch, val[ctx.metric]))

    def _save_epoch(self, ctx: _Run, epoch: int, val: dict[str, Any], *, improved: bool) -> None:
        """``model.pt`` when the epoch is the best so far; ``last.pt`` (what ``--resume`` reads) every epoch."""
        c, schema, meta = self.config, ctx.data.schema, {"epoch": epoch, "val": val}
        if improved:
            save_checkpoint(ctx.dir / "model.pt", ctx.model, schema, train_config=asdict(c), metrics=meta)
        trainer_state = {
            "epoch": epoch,
            "optimizers": [o.state_dict() for o in ctx.optimizers],
            "history": ctx.history,
            "best_metric": ctx.loop.best_metric,
            "best_epoch": ctx.loop.best_epoch,
            "bad_epochs": ctx.loop.bad_epochs,
            "train_seconds": ctx.train_seconds,
        }
        save_checkpoint(ctx.dir / "last.pt", ctx.model, schema, train_config=asdict(c), metrics=meta,
                        extra={"trainer_state": trainer_state, "data_identity": ctx.data_identity})

    # ------------------------------------------------------------------ after training
    def _test_best(self, ctx: _Run) -> TrainResult:
        """Evaluate test once with the model chosen on validation (``model.pt``); write ``train.json``."""
        from ondevice.train.checkpoint import load_checkpoint

        data, device, best_epoch = ctx.data, ctx.device, ctx.loop.best_epoch
        best = load_checkpoint(ctx.dir / "model.pt").model.to(device)
        val_best = ctx.history[best_epoch - 1]["val"] if best_epoch else {}
        test = self._evaluate(best, data, "test", device, ctx.topk) if data.has_split("test") else {}
        baselines, warnings = self._baselines(data, device, ctx.topk, ctx.metric, val_best)
        result = TrainResult(ctx.dir, best_epoch, val_best, test, ctx.history, ctx.train_seconds, baselines, warnings)
        if ctx.dist.is_main:
            self._write_run(ctx, best, result)
        ctx.progress.line(f"best epoch {best_epoch}: val {ctx.metric} {ctx.loop.best_metric:.4f}; "
                          f"{_metrics_text('test', test)}")
        return result

    def _write_run(self, ctx: _Run, best: RecModel, result: TrainResult) -> None:
        """``model.pt`` with its val/test metrics and ``train.json`` (config, versions, history)."""
        data, c = ctx.data, self.config
        metrics = {"epoch": result.best_epoch, "val": result.val, "test": result.test, "selected_on": f"val {ctx.metric}"}
        ckpt = load_raw(ctx.dir / "model.pt")
        save_checkpoint(ctx.dir / "model.pt", best, data.schema, train_config=ckpt["train_config"], metrics=metrics)
        atomic_write_json(ctx.dir / "train.json", {
            "ondevice_version": __version__,
            "torch_version": torch.__version__,
            "data_dir": str(data.root.resolve()),
            "schema_fingerprint": data.schema.fingerprint(),
            "task": data.task,
            "config": asdict(c),
            "world_size": ctx.dist.world_size,
            "best_epoch": result.best_epoch,
            "selected_on": f"val {ctx.metric}",
            "val": result.val,
            "test": result.test,
            "train_seconds": result.train_seconds,
            "params": sum(p.numel() for p in best.parameters()),
            "baselines": result.baselines,
            "warnings": result.warnings,
            "history": ctx.history,
        })
    def _baselines(self, data: EncodedDataset, device, ctx, metric_name: str,
                   val_best: dict[str, float]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Top-K: the most-popular baseline on val and test (a fixed model, nothing selected
        on it), and a warning when the trained model does not beat it by ``POPULARITY_MARGIN``."""
        if data.task != "topk":
            return {}, []
        n_users, n_items = data.schema.vocab_sizes[:2]
        pop = popularity_model(ctx["train"], n_users, n_items).to(device)
        baselines = {"popularity": {split: self._evaluate(pop, data, split, device, ctx)
                                    for split in ("val", "test") if data.has_split(split)}}
        pop_val = baselines["popularity"].get("val", {}).get(metric_name)
        warnings = []
        if pop_val is not None and val_best and val_best[metric_name] < POPULARITY_MARGIN * pop_val:
            warnings.append(f"{self.config.model} val {metric_name} {val_best[metric_name]:.4f} is only "
                            f"{val_best[metric_name] / max(pop_val, 1e-12):.2f}x the popularity baseline's {pop_val:.4f}; "
                            "train longer (--epochs), try another --lr, or run `ondevice tune`")
        return baselines, warnings


    def _evaluate(self, model: RecModel, data: EncodedDataset, split: str, device, ctx) -> dict[str, float]:
        c = self.config
        if data.task == "ctr":
            s = data.split(split)
            return evaluate_ctr(model, s.ids, s.labels, batch_size=c.eval_batch_size, device=device)
        exclude = [ctx["train"]]
        if split == "test" and ctx["val"] is not None:
            exclude.append(ctx["val"])
        return evaluate_topk(model, ctx[split], exclude, k=c.k, protocol=c.eval_protocol,
                             negatives=c.eval_negatives, seed=c.seed, device=device)


def train(data_dir: str | Path, out_dir: str | Path, config: TrainConfig, *, resume: bool = False,
          force: bool = False, quiet: bool = False, on_epoch: Callable[[int, float], bool] | None = None) -> TrainResult:
    """Library entry point behind ``ondevice train``."""
    return Trainer(config, quiet=quiet, on_epoch=on_epoch).fit(data_dir, out_dir, resume=resume, force=force)
