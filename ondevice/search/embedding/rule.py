"""RULE: an elastic item table trained once, then a block configuration searched per budget.

Chen et al., "Learning Elastic Embeddings for Customizing On-Device Recommenders", KDD 2021
(survey §5.3). Top-K (BPR-MF) only. No author code is public; settings are named as in the
same group's ``RuiqiZheng08/PEEL`` (``config_all.py``). The survey numbers no RULE equation:
(1) and (2) below are this package's labels, not the paper's.

1. Elastic training, once: ``n_b`` blocks per item, ``n_g`` popularity groups, a configuration
   gives each group a non-empty block subset ``S_g`` and scores by rule (1) of
   :mod:`ondevice.embedding.elastic`, ``s(u,i|S) = Σ_{k∈S_g} ⟨u_k, b_{i,k}⟩``. One random
   configuration per batch; loss = BPR + L2 + ``λ·R`` (diversity term (2), :func:`diversity_penalty`).
2. Estimator: a single-hidden-layer feed-forward net (:class:`PerformanceEstimator`) fitted to the
   true validation Recall@K of ``n_samples`` random configurations. 2b: held-out Spearman below
   ``min_estimator_rho`` and its pick is not deployed.
3. Regularised evolution per budget (:func:`ondevice.search.evolution.regularized_evolution`):
   fitness = the estimator, mutation flips 1-3 bits and repairs to the budget. 3b: the
   :func:`nested_configs` compete with its best on true validation Recall@K.
4. Per-budget fine-tuning of the chosen configuration (:func:`finetune_config`).
5. Monotone in the budget: the pick competes with configurations already deployed from this
   supernet that fit, and with the full model. Steps 1-2 are cached (:meth:`RULESearcher.supernet`).

Time limit (``search.retrain.deadline``): training stops at its next step, sample scoring after
:data:`MIN_SAMPLES_AT_DEADLINE`, 3b after one candidate, 4 is skipped; nothing cut short is cached.

Deviations from the paper:

* Per-block user slices, no ``n_b/|S|`` rescale (PEEL tiles and rescales): see elastic's docstring.
* Diversity term (2) is ours: RULE's form is not public, PEEL's is commented out.
* Warm start from the checkpoint in the item table's singular basis (the paper trains from
  scratch): all blocks = the trained model, leading blocks hold the strongest directions.
* Estimator fitted on validation users, Recall@K (PEEL: test users, Recall@100): test read once.
* ``n_samples`` 600, ``cycles`` 1000 (PEEL: 5000, 50): scoring is costly, an estimator call is not.
* Steps 2b, 3b, 4, 5 are ours: the estimator misranks configurations far from its samples, the
  paper never retrains the pick, and a larger budget must not deploy a worse model.
* Bytes: the exact deployable file (:func:`ondevice.embedding.elastic.config_bytes` + graph).

Measured: ``benchmarks/results/rule_ml1m.md`` and ``benchmarks/results/rule_cds.md`` (vs uniform
dimension, int8, PEP; estimator rank correlation; seconds per budget), and
``benchmarks/results/rule_ml1m_budgets.md`` (monotone deployment, supernet reuse).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ondevice.data import EncodedDataset
from ondevice.embedding.elastic import ElasticBlockEmbedding, ElasticSubsetEmbedding, config_bytes
from ondevice.embedding.quantized import check_table_dtype
from ondevice.errors import BadInputError, WeakSignalError
from ondevice.io import atomic_write_bytes
from ondevice.models import BPRMF
from ondevice.search.base import (
    SearchContext,
    Searcher,
    SearchResult,
    make_config,
    register_searcher,
)
from ondevice.search.evolution import regularized_evolution
from ondevice.search.retrain import (
    fit_topk,
    past_deadline,
    topk_metric_name,
    topk_pairs,
    val_metrics,
)
from ondevice.train.checkpoint import Checkpoint

__all__ = ["ConfigScorer", "FinetuneResult", "PerformanceEstimator", "RULESearcher", "diversity_penalty", "finetune_config",
           "nested_configs", "sample_config"]

#: Graph bytes per distinct block subset (Range/Gather/Reshape/Concat nodes), measured on
#: BPR-MF exports: fp32/fp16 ≈ 800 B, int8 ≈ 950 B (two more nodes); rounded up.
GRAPH_BYTES_PER_SUBSET = {"float32": 1024, "float16": 1024, "int8": 1152}
#: Graph bytes of the elastic layer over a dense item table (position Gather, Cast, Concat).
GRAPH_BYTES_BASE = 1536
# Sampled configurations scored at least when a time limit passes while the estimator's samples are
# scored: enough to fit it; a supernet cut short fails its signal check anyway (nested configurations deploy).
MIN_SAMPLES_AT_DEADLINE = 5
#: Popularity tilts of step 3b's nested configurations (:func:`nested_configs`).
NESTED_TILTS = (0.0, 0.5, 1.0, 2.0, 4.0)

_CACHE: dict[str, _Supernet] = {}


# ---------------------------------------------------------------------- training (step 1)
def sample_config(rng: np.random.Generator, n_groups: int, n_blocks: int) -> np.ndarray:
    """Per group: a size uniform in 1..n_b, then a uniform subset of that size -> bool ``[n_g, n_b]``."""
    mask = np.zeros((n_groups, n_blocks), dtype=bool)
    sizes = rng.integers(1, n_blocks + 1, size=n_groups)
    for g, s in enumerate(sizes):
        mask[g, rng.choice(n_blocks, size=s, replace=False)] = True
    return mask


def diversity_penalty(layer: ElasticBlockEmbedding, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """(2): mean squared off-diagonal correlation of the per-block BPR margins over the batch.

    ``Δ_{b,k} = ⟨u_{b,k}, b_{i_b,k} − b_{j_b,k}⟩`` (batch row ``b``, block ``k``), then
    ``R = 1/(n_b(n_b−1)) · Σ_{k≠l} corr_batch(Δ_{·,k}, Δ_{·,l})²``. Our form (RULE's is not
    public): with per-block user slices each block has its own subspace, so a distance between
    blocks means nothing; what makes two blocks redundant is that they rank the same way. ``R``
    is bounded in [0, 1], cannot be lowered by shrinking weights, and costs one ``n_b × n_b``
    matrix per batch.
    """
    n_b = layer.n_blocks
    margins = layer.block_scores(u, pos) - layer.block_scores(u, neg)  # [B, n_b]
    z = margins - margins.mean(dim=0, keepdim=True)
    z = z / (z.norm(dim=0, keepdim=True) + 1e-8)
    corr = z.t() @ z  # [n_b, n_b], unit diagonal
    off = corr - torch.diag(torch.diagonal(corr))
    return off.pow(2).sum() / (n_b * (n_b - 1))


# ---------------------------------------------------------------------- scoring configurations
class ConfigScorer:
    """True validation Recall@K / NDCG@K of a configuration, fast (full ranking, train items excluded).

    Users: up to ``max_users`` validation users drawn with ``seed``. Item vectors of a
    configuration are the elastic table on the kept blocks of the item's group and zero
    elsewhere (rule (1), no rescale); one ``[U, D] @ [D, N]`` product per configuration.
    """

    def __init__(self, model: BPRMF, train_pairs: np.ndarray, val_pairs: np.ndarray, *, k: int = 20,
                 max_users: int | None = 1000, seed: int = 0) -> None:
        layer = model.item_embedding
        assert isinstance(layer, ElasticBlockEmbedding)
        self.layer, self.k = layer, int(k)
        users = np.unique(val_pairs[:, 0])
        if max_users is not None and len(users) > max_users:
            users = np.sort(np.random.default_rng([seed, 11]).choice(users, size=max_users, replace=False))
        self.users = users
        row = {int(u): r for r, u in enumerate(users)}
        n_items = model.num_items
        with torch.no_grad():
            self.u = model.user_vectors(torch.from_numpy(users.astype(np.int64))).detach().clone()
            self.w = layer.weight.detach().clone()
        self.group = layer.item_group.clone()
        self.exclude = torch.zeros(len(users), n_items)
        self.exclude[:, 0] = -torch.inf
        tr = train_pairs[np.isin(train_pairs[:, 0], users)]
        self.exclude[torch.tensor([row[int(u)] for u in tr[:, 0]], dtype=torch.int64), torch.from_numpy(tr[:, 1])] = -torch.inf
        va = val_pairs[np.isin(val_pairs[:, 0], users)]
        self.relevant = torch.zeros(len(users), n_items, dtype=torch.bool)
        self.relevant[torch.tensor([row[int(u)] for u in va[:, 0]], dtype=torch.int64), torch.from_numpy(va[:, 1])] = True
        self.n_rel = self.relevant.sum(1).clamp(min=1).double()
        disc = 1.0 / np.log2(np.arange(2, self.k + 2))
        self.disc = torch.from_numpy(disc)
        self.idcg = torch.from_numpy(np.cumsum(disc))[(self.n_rel.long().clamp(max=self.k) - 1)]

    @torch.no_grad()
    def __call__(self, mask: np.ndarray) -> tuple[float, float]:
        factor = torch.from_numpy(np.asarray(mask, dtype=bool)).float().repeat_interleave(self.layer.block_dim, dim=1)
        items = self.w * factor[self.group]
        scores = self.u @ items.t() + self.exclude
        top = torch.topk(scores, self.k, dim=1).indices
        hits = self.relevant.gather(1, top).double()
        recall = (hits.sum(1) / self.n_rel).mean().item()
        ndcg = ((hits * self.disc).sum(1) / self.idcg).mean().item()
        return recall, ndcg


# ---------------------------------------------------------------------- estimator (step 2)
class PerformanceEstimator(nn.Module):
    """Single-hidden-layer feed-forward net on per-group rows ``[one-hot(g) | multi-hot(S_g)]``, summed.

    Input: configurations as flat ``[n_g·n_b]`` bits (a mask ``[n_g, n_b]`` raveled).
    ``ŷ = Σ_g w₂ᵀ ReLU(W₁ x_g + b₁) + b₂`` on standardised targets. Why per group: a net on the flat
    bit vector, fitted on a few hundred samples, was exploited by the evolution (its pick was
    estimated far above its true Recall@K); sharing weights across groups is much harder to fool.
    """

    def __init__(self, n_groups: int, n_blocks: int, hidden: int = 64) -> None:
        super().__init__()
        self.n_groups, self.n_blocks = int(n_groups), int(n_blocks)
        self.net = nn.Sequential(nn.Linear(n_groups + n_blocks, hidden), nn.ReLU(), nn.Linear(hidden, 1, bias=False))
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.view(-1, self.n_groups, self.n_blocks)
        onehot = torch.eye(self.n_groups).expand(rows.shape[0], -1, -1)
        return self.net(torch.cat([onehot, rows], dim=-1)).squeeze(-1).sum(-1) + self.bias  # [K]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._raw(x) * self.y_std + self.y_mean

    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int = 400, lr: float = 1e-2, weight_decay: float = 1e-4,
            seed: int = 0) -> PerformanceEstimator:
        torch.manual_seed(seed)
        xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
        self.y_mean.fill_(float(yt.mean()))
        self.y_std.fill_(float(yt.std()) if len(yt) > 1 and float(yt.std()) > 0 else 1.0)
        target = (yt - self.y_mean) / self.y_std
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            opt.zero_grad()
            loss = (self._raw(xt) - target).pow(2).mean()
            loss.backward()
            opt.step()
        self.eval()
        return self

    def numpy_fn(self):
        """A fast ``bits [n_g·n_b] -> float`` closure (numpy, no autograd) for the search loop."""
        w1 = self.net[0].weight.detach().numpy().T.copy()  # [n_g + n_b, H]
        group_part = w1[: self.n_groups] + self.net[0].bias.detach().numpy()  # one-hot(g) @ W1 + b1: [n_g, H]
        w_blocks = w1[self.n_groups:]  # [n_b, H]
        w2, b2 = self.net[2].weight.detach().numpy()[0].copy(), float(self.bias.detach())
        mean, std = float(self.y_mean), float(self.y_std)
        shape = (self.n_groups, self.n_blocks)

        def f(bits: np.ndarray) -> float:
            h = np.maximum(group_part + bits.reshape(shape).astype(np.float32) @ w_blocks, 0.0)
            return float((h @ w2).sum() + b2) * std + mean

        return f


def rank_correlations(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Spearman's rho and Kendall's tau-b between estimates and true values."""
    from scipy.stats import kendalltau, spearmanr

    return {"spearman": float(spearmanr(pred, true).statistic), "kendall": float(kendalltau(pred, true).statistic)}


# ---------------------------------------------------------------------- the cached supernet
@dataclass
class _Supernet:
    model: BPRMF  # users + ElasticBlockEmbedding items
    estimator: PerformanceEstimator
    samples_x: np.ndarray
    samples_y: np.ndarray
    stats: dict[str, Any]
    key: str = ""
    folder: Path | None = None  # where the supernet and its deployed configurations are cached
    #: Deployed configurations, by :func:`_entry_id` (mask, fine-tune settings, dtype): the mask,
    #: the full validation metrics of the deployed model, and the fine-tuned tables (``None``: none).
    deployed: dict[str, dict[str, Any]] = field(default_factory=dict)
    full_val: dict[str, float] | None = None


def _training_seconds(stats: dict[str, Any]) -> float:
    """Seconds steps 1-2 took when the supernet was trained (elastic training, scoring, estimator)."""
    return float(stats.get("train_s", 0.0) + stats.get("score_samples_s", 0.0) + stats.get("estimator_s", 0.0))


def _mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=bool).tobytes() + str(mask.shape).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    """sha256 of a file (the run's checkpoint), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def estimator_signal(stats: dict[str, Any], min_rho: float) -> dict[str, Any]:
    """The estimator's signal check: Spearman's rho between its estimates and the true validation
    Recall@K of held-out sampled configurations (step 2) must reach ``min_rho``."""
    held = stats.get("estimator_heldout")
    rho = None if held is None else held.get("spearman")
    ok = rho is not None and not math.isnan(rho) and rho >= min_rho and not stats.get("stopped_at_deadline")
    out = {"test": "estimator vs true val Recall@K, Spearman on held-out sampled configurations",
           "spearman": rho, "n": None if held is None else held["n"], "threshold": min_rho, "passed": bool(ok)}
    if stats.get("stopped_at_deadline"):  # a few samples can pass by chance: never trusted
        out["reason"] = (f"the estimator's samples stopped at the time limit after {stats.get('n_samples')} "
                         "configurations")
    return out


@register_searcher
class RULESearcher(Searcher):
    """RULE: train an elastic item table once, then evolve a block configuration per budget.

    Parameters (keyword-only; PEEL's names in brackets)
    ----------
    n_blocks [max_num_blocks_per] : blocks per item (16); must divide the embedding dim.
    n_groups [G] : popularity groups (20).
    epochs, lr, batch_size, l2, patience : elastic training (BPR, Adam; lazy Adam on tables).
    diversity : λ of the diversity regulariser (2), :func:`diversity_penalty` (0 = off).
    n_samples [K] : configurations scored to fit the estimator (PEEL 5000; default 600).
    eval_users : validation users sampled to score a configuration.
    hidden : width of the estimator's hidden layer.
    population [P], cycles [C], tournament [S] : regularised evolution (20, 1000, 5).
    k : K of Recall@K (the fitness and the reported metric).
    dtype : stored value type of the kept blocks (float32, float16, int8).
    nested_candidates : also weigh popularity-graded leading-block configurations and pick among
        them and the evolution's best by true validation Recall@K (step 3b; False = the paper).
    pick_users : validation users of step 3b's pick: a fresh sample, not the ``eval_users`` the
        estimator was fitted on (``None``: every validation user).
    finetune_epochs, finetune_lr : per-budget BPR fine-tuning of the chosen configuration
        (step 4 of the module docstring; default 3; 0 = none, the paper's setting).
    min_estimator_rho : the estimator's signal check (step 2b): held-out Spearman below this and
        the evolution's pick is not deployed (0 = off).
    progress : one stderr line per search saying whether the supernet was trained (and in how many
        seconds) or reused from memory or the cache folder (``compress`` sets it unless ``--quiet``).
    """

    name = "rule"
    supports_dtype = True
    tasks = ("topk",)

    def __init__(self, *, n_blocks: int = 16, n_groups: int = 20, epochs: int = 5, lr: float = 1e-3,
                 batch_size: int = 2048, l2: float = 1e-4, diversity: float = 0.1, patience: int = 2,
                 n_samples: int = 600, eval_users: int = 1000, hidden: int = 64, population: int = 20,
                 cycles: int = 1000, tournament: int = 5, k: int = 20, dtype: str = "float32",
                 nested_candidates: bool = True, pick_users: int | None = 2000, finetune_epochs: int = 3,
                 finetune_lr: float = 5e-3, min_estimator_rho: float = 0.5, seed: int = 0,
                 progress: bool = False) -> None:
        self.n_blocks = n_blocks
        self.n_groups = n_groups
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.l2 = l2
        self.diversity = diversity
        self.patience = patience
        self.n_samples = n_samples
        self.eval_users = eval_users
        self.hidden = hidden
        self.population = population
        self.cycles = cycles
        self.tournament = tournament
        self.k = k
        self.dtype = dtype
        self.nested_candidates = nested_candidates
        self.pick_users = pick_users
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = finetune_lr
        self.min_estimator_rho = min_estimator_rho
        self.seed = seed
        self.progress = progress

    def _say(self, text: str) -> None:
        if self.progress:
            clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over a training bar still drawn (train.progress)
            sys.stderr.write(f"{clear}  rule: {text}\n")
            sys.stderr.flush()

    def expected_validation_passes(self, ckpt: Checkpoint, data: EncodedDataset) -> float:
        """Scoring ``n_samples`` configurations on ``eval_users`` (skipped when the supernet is cached),
        step 3b's candidates on ``pick_users`` and the deployed model once, in full validation passes."""
        n_val = max(1, len(np.unique(topk_pairs(data, "val")[:, 0])))

        def share(users: int | None) -> float:  # of the validation users a scoring pass reads
            return 1.0 if users is None else min(1.0, users / n_val)

        ctx = SimpleNamespace(ckpt=ckpt, data=data, work_dir=None)
        key, folder = self._cache_key(ctx), self.cache_folder(ctx)  # type: ignore[arg-type]
        cached = key in _CACHE or (folder is not None and (folder / f"supernet-{key}.pt").is_file())
        samples = 0.0 if cached else self.n_samples * share(self.eval_users)
        return samples + (len(NESTED_TILTS) + 1) * share(self.pick_users) + 1.0

    # ------------------------------------------------------------ once for all
    def _cache_key(self, ctx: SearchContext) -> str:
        full = ctx.ckpt.model
        with torch.no_grad():
            digest = hashlib.sha256(full.item_embedding.dense_weight().numpy().tobytes()).hexdigest()[:16]  # type: ignore[union-attr]
        per_budget = ("dtype", "population", "cycles", "tournament", "nested_candidates", "pick_users", "finetune_epochs",
                      "finetune_lr", "min_estimator_rho", "progress")
        shaping = {k: v for k, v in self.get_params().items() if k not in per_budget}
        run = ctx.ckpt.path
        checksum = _file_digest(run) if run is not None and Path(run).is_file() else None
        blob = json.dumps({"weights": digest, "run_checksum": checksum, "data": str(ctx.data.root), "params": shaping},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @staticmethod
    def cache_folder(ctx: SearchContext) -> Path | None:
        """Where the supernet is kept: ``RUN_DIR/_cache/rule`` beside the run's checkpoint (never in
        ``compress --out``, which is replaced per call); ``work_dir/rule`` for a checkpoint with no
        file; ``None``: memory only."""
        if ctx.ckpt.path is not None:
            return Path(ctx.ckpt.path).parent / "_cache" / "rule"
        return ctx.work_dir / "rule" if ctx.work_dir is not None else None

    def supernet(self, ctx: SearchContext) -> _Supernet:
        """The trained elastic model + estimator: from memory, the run's cache folder, or trained now.

        Cached as ``RUN_DIR/_cache/rule/supernet-<key>.pt`` (temp file + rename), ``<key>`` over the
        checkpoint's sha256, its item table, the data folder and every setting that shapes them; the
        registry of deployed configurations (step 5) sits beside it as ``deployed-<key>.pt``. A
        read-only run folder keeps the supernet in memory (``stats["not_saved"]``).
        """
        key = self._cache_key(ctx)
        if key in _CACHE:
            self._say(f"supernet reused from memory, skipping {_training_seconds(_CACHE[key].stats):.1f} s of training")
            return _CACHE[key]
        folder = self.cache_folder(ctx)
        path = folder / f"supernet-{key}.pt" if folder is not None else None
        net = self._load(path) if path is not None and path.is_file() else None
        if net is not None:
            self._say(f"supernet reused from {path}, skipping {_training_seconds(net.stats):.1f} s of training")
        else:
            net = self._train(ctx)
            if net.stats.get("stopped_at_deadline"):  # cut short by a time limit: never reused by a later call
                net.stats["not_saved"] = "stopped at the time limit"
                path = folder = None
            if path is not None:
                try:
                    self._save(net, path)
                    net.stats["saved_to"] = str(path)
                except OSError as err:  # a read-only run folder: keep it in memory
                    net.stats["not_saved"] = f"{path}: {err.strerror or err}"
                    folder = None
            saved, why = net.stats.get("saved_to"), net.stats.get("not_saved", "no run folder to cache it in")
            self._say(f"supernet trained in {_training_seconds(net.stats):.1f} s, "
                      + (f"cached as {saved}" if saved else f"not cached ({why})"))
        net.key, net.folder = key, folder
        if folder is not None:
            net.deployed = self._load_deployed(folder / f"deployed-{key}.pt")
        _CACHE.clear()  # keep one: a supernet holds a copy of the model
        _CACHE[key] = net
        return net

    def _save(self, net: _Supernet, path: Path) -> None:
        import io

        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"model": net.model.describe(), "state": net.model.state_dict(),
                    "estimator": net.estimator.state_dict(), "hidden": self.hidden,
                    "n_groups": net.estimator.n_groups,
                    "x": torch.from_numpy(net.samples_x), "y": torch.from_numpy(net.samples_y),
                    "stats": json.dumps(net.stats)}, buf)
        atomic_write_bytes(path, buf.getvalue())

    @staticmethod
    def _load_deployed(path: Path) -> dict[str, dict[str, Any]]:
        if not path.is_file():
            return {}
        try:
            blob = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            return {}
        return {k: {**v, "mask": v["mask"].numpy().astype(bool), "val": json.loads(v["val"])} for k, v in blob.items()}

    @staticmethod
    def _save_deployed(net: _Supernet) -> None:
        import io

        if net.folder is None:
            return
        blob = {k: {**v, "mask": torch.from_numpy(np.ascontiguousarray(v["mask"])), "val": json.dumps(v["val"])}
                for k, v in net.deployed.items()}
        buf = io.BytesIO()
        torch.save(blob, buf)
        try:
            net.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(net.folder / f"deployed-{net.key}.pt", buf.getvalue())
        except OSError:
            pass  # the registry stays in memory

    def _load(self, path: Path) -> _Supernet:
        from ondevice.models import model_from_description

        blob = torch.load(path, weights_only=True)
        model = model_from_description(blob["model"])
        model.load_state_dict(blob["state"])
        x, y = blob["x"].numpy(), blob["y"].numpy()
        est = PerformanceEstimator(blob["n_groups"], x.shape[1] // blob["n_groups"], blob["hidden"])
        est.load_state_dict(blob["estimator"])
        stats = json.loads(blob["stats"])
        stats["loaded_from"] = str(path)
        return _Supernet(model=model.eval(), estimator=est.eval(), samples_x=x, samples_y=y, stats=stats)  # type: ignore[arg-type]

    def _train(self, ctx: SearchContext) -> _Supernet:
        full: BPRMF = ctx.ckpt.model  # type: ignore[assignment]
        data = ctx.data
        train_pairs, val_pairs = topk_pairs(data, "train"), topk_pairs(data, "val")
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        counts = np.bincount(train_pairs[:, 1], minlength=full.num_items)
        items = ElasticBlockEmbedding.from_dense(full.item_embedding, counts, n_blocks=self.n_blocks,
                                                 n_groups=self.n_groups)
        users = copy.deepcopy(full.user_embedding)
        # Warm start: Q = U Σ Vᵀ -> items Q V, users P V (V orthogonal: the all-blocks scores are the
        # trained model's), block 1 holding the strongest singular directions, block 2 the next...
        with torch.no_grad():
            q = full.item_embedding.dense_weight()
            if q.shape[0] >= q.shape[1] and hasattr(users, "weight"):
                _, _, vt = torch.linalg.svd(q, full_matrices=False)  # vt only: full U is items x items
                items.weight.copy_(q @ vt.t())
                users.weight.copy_(full.user_embedding.dense_weight() @ vt.t())
        model = BPRMF(users, items)
        n_g = items.n_groups

        def before_step(_step: int, rng: np.random.Generator) -> None:
            items.set_config(sample_config(rng, n_g, self.n_blocks), training_only=True)

        def extra_loss(m: BPRMF, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            return self.diversity * diversity_penalty(items, m.user_vectors(users), pos, neg)

        fit = fit_topk(model, data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                       patience=self.patience, l2=self.l2, k=self.k, before_step=before_step,
                       extra_loss=extra_loss if self.diversity > 0 else None)
        items.set_config(None)
        train_s = time.perf_counter() - t0
        # Step 2: score K sampled configurations on validation users, fit the estimator.
        t1 = time.perf_counter()
        scorer = ConfigScorer(model, train_pairs, val_pairs, k=self.k, max_users=self.eval_users, seed=self.seed)
        rng = np.random.default_rng([self.seed, 5])
        xs, ys = [], []
        stopped = fit.stopped_at_deadline
        for _ in range(self.n_samples):
            if past_deadline() and len(ys) >= MIN_SAMPLES_AT_DEADLINE:  # compress --time-limit
                stopped = True
                break
            p = float(np.exp(rng.uniform(np.log(1.0 / self.n_blocks), 0.0)))
            mask = rng.random((n_g, self.n_blocks)) < p
            for g in np.flatnonzero(~mask.any(1)):
                mask[g, rng.integers(self.n_blocks)] = True
            xs.append(mask.ravel())
            ys.append(scorer(mask)[0])
        x, y = np.asarray(xs, dtype=bool), np.asarray(ys, dtype=np.float64)
        score_s = time.perf_counter() - t1
        n_fit = max(2, int(round(0.8 * len(y))))
        est = PerformanceEstimator(n_g, self.n_blocks, self.hidden).fit(x[:n_fit], y[:n_fit], seed=self.seed)
        stats: dict[str, Any] = {"train_s": train_s, "score_samples_s": score_s, "fit_history": fit.history,
                                 "full_val": fit.val, "scored_users": int(len(scorer.users)), "n_samples": int(len(y))}
        if stopped:
            stats["stopped_at_deadline"] = True
        if len(y) - n_fit >= 3:
            with torch.no_grad():
                pred = est(torch.from_numpy(x[n_fit:].astype(np.float32))).numpy().astype(np.float64)
            held = y[n_fit:]
            stats["estimator_heldout"] = {
                "n": int(len(held)), **rank_correlations(pred, held),
                "mse": float(np.mean((pred - held) ** 2)),
                "mse_constant": float(np.mean((y[:n_fit].mean() - held) ** 2)),
            }
        stats["estimator_s"] = time.perf_counter() - t1 - score_s
        return _Supernet(model=model.eval(), estimator=est, samples_x=x, samples_y=y, stats=stats)

    # ------------------------------------------------------------ per budget
    def _search(self, ctx: SearchContext) -> SearchResult:
        check_table_dtype(self.dtype, owner="rule")
        t0 = time.perf_counter()
        net = self.supernet(ctx)
        supernet_s = time.perf_counter() - t0
        layer: ElasticBlockEmbedding = net.model.item_embedding  # type: ignore[assignment]
        sizes, n_g, n_b, dim = layer.group_sizes, layer.n_groups, layer.n_blocks, layer.dim
        acc, budget = ctx.accountant, ctx.budget_bytes
        target = budget - acc.graph_overhead_bytes - acc.margin_bytes
        per_subset = GRAPH_BYTES_PER_SUBSET[self.dtype]

        def cost(mask: np.ndarray) -> int:
            distinct = len({r.tobytes() for r in mask})
            return config_bytes(sizes, mask, dim, self.dtype) + GRAPH_BYTES_BASE + per_subset * distinct

        smallest = np.zeros((n_g, n_b), dtype=bool)
        smallest[:, 0] = True
        if cost(smallest) > target:
            raise acc.too_small(self.method_name(), budget, cost(smallest) + budget - target, net.model,
                                smallest_embedding=cost(smallest), what="item table at one block per item (with its graph nodes)")
        row_cost = np.asarray(sizes)[:, None] * np.ones((1, n_b))  # value bytes grow with the group's items

        def repair(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            for g in np.flatnonzero(~mask.any(1)):
                mask[g, rng.integers(n_b)] = True
            while cost(mask) > target:
                multi = np.flatnonzero(mask.sum(1) > 1)
                if len(multi) == 0:  # one block each but too many distinct subsets: share group 0's
                    mask[:] = mask[0]
                    break
                g = rng.choice(multi)
                mask[g, rng.choice(np.flatnonzero(mask[g]))] = False
            # fill: add random blocks while they fit (a few tries per round)
            while True:
                slack = target - cost(mask)
                off = np.argwhere(~mask & (row_cost <= slack))
                if len(off) == 0:
                    break
                added = False
                for g, kb in off[rng.permutation(len(off))[:8]]:
                    mask[g, kb] = True
                    if cost(mask) <= target:
                        added = True
                        break
                    mask[g, kb] = False
                if not added:
                    break
            return mask

        frac = min(1.0, max(1.0 / n_b, target / max(1, config_bytes(sizes, np.ones((n_g, n_b), bool), dim, self.dtype))))

        def init(rng: np.random.Generator) -> np.ndarray:
            return repair(rng.random((n_g, n_b)) < frac, rng)

        def mutate(parent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            child = parent.copy()
            for _ in range(int(rng.integers(1, 4))):
                g, kb = rng.integers(n_g), rng.integers(n_b)
                child[g, kb] = not child[g, kb]
            return repair(child, rng)

        signal = estimator_signal(net.stats, self.min_estimator_rho) if self.min_estimator_rho > 0 else None
        if signal is not None and not signal["passed"] and not self.nested_candidates:
            rho = "none (too few held-out samples)" if signal["spearman"] is None else f"{signal['spearman']:.2f}"
            raise WeakSignalError(f"rule: the performance estimator ranks held-out configurations with Spearman {rho} "
                                  f"< {self.min_estimator_rho}; its pick is not deployed: raise n_samples or the "
                                  "elastic epochs, or use nested_candidates", statistic=signal["spearman"],
                                  threshold=self.min_estimator_rho)
        estimate = net.estimator.numpy_fn()
        evo = regularized_evolution(init=init, mutate=mutate, fitness=estimate, population=self.population,
                                    cycles=self.cycles, tournament=self.tournament, seed=self.seed,
                                    trace_every=max(1, self.cycles // 50))
        best, picked = evo.best, {"source": "evolution"}
        trusted = signal is None or signal["passed"]
        if self.nested_candidates:
            evolution = [("evolution", evo.best)] if trusted else []
            best, picked = self._pick_on_validation(net, ctx, evolution + nested_configs(
                sizes, n_b, lambda m: cost(m) <= target))
            if not trusted:
                picked["evolution_dropped"] = "estimator signal check failed"
        search_s = time.perf_counter() - t0 - supernet_s
        metric = topk_metric_name(self.k)
        # Step 5: the deployed model, monotone in the budget (module docstring).
        searched = best
        entry, tuned = self._deploy_entry(net, ctx, searched)
        options = [("searched", entry)] + [
            ("earlier budget", e) for i, e in net.deployed.items()
            if i != entry["id"] and e["settings"] == entry["settings"] and cost(e["mask"]) <= target]
        full = ctx.ckpt.model
        full_fits = acc.file_bytes_estimate(full) <= budget
        if full_fits:
            if net.full_val is None:
                net.full_val = val_metrics(copy.deepcopy(full), ctx.data, k=self.k)
            options.append(("full model", {"val": net.full_val, "mask": np.ones((n_g, n_b), bool), "full": True}))

        def rank(option: tuple[str, dict[str, Any]]) -> tuple[float, int]:
            source, e = option
            nbytes = acc.file_bytes_estimate(full) if e.get("full") else cost(e["mask"]) + acc.graph_overhead_bytes
            return (e["val"][metric], -nbytes)

        source, chosen = max(options, key=rank)
        deployed = {"source": source, "candidates": [{"source": src, metric: e["val"][metric],
                                                      "blocks": int(np.asarray(e["mask"]).sum())} for src, e in options],
                    "full_model_fits": full_fits}
        if chosen.get("full"):
            model = copy.deepcopy(full).eval()
            val, best = dict(net.full_val or {}), np.ones((n_g, n_b), bool)
        else:
            model, val, best = self._entry_model(net, chosen), chosen["val"], chosen["mask"]
        blocks = [[int(b) for b in np.flatnonzero(r)] for r in best]
        config = make_config("RULEConfig", {"n_blocks": n_b, "n_groups": n_g, "group_sizes": list(sizes),
                                            "blocks": blocks, "dtype": self.dtype,
                                            **({"full_model": True} if chosen.get("full") else {})})
        trace = [{"supernet": {k: v for k, v in net.stats.items() if k != "fit_history"},
                  "training": net.stats.get("fit_history", [])},
                 {"budget_bytes": budget, "embedding_target_bytes": target,
                  "config_bytes": config_bytes(sizes, searched, dim, self.dtype),
                  "estimated_bytes_with_graph": cost(searched),
                  "blocks_per_group": [int(n) for n in searched.sum(1)], "pairs": int(searched.sum()),
                  "deployed_blocks_per_group": [len(b) for b in blocks],
                  "estimated_" + topk_metric_name(self.k): evo.best_fitness, "evaluations": evo.evaluations},
                 {"evolution": evo.history, "picked": picked, "estimator_signal": signal, "deployed": deployed}]
        if tuned is not None:
            trace.append({"finetune": tuned.history, "best_epoch": tuned.best_epoch, "val_before": tuned.val_before,
                          "seconds": tuned.seconds})
        elif entry.get("finetune_skipped"):
            trace.append({"finetune": "skipped: past the time limit"})
        elif self.finetune_epochs > 0:
            trace.append({"finetune": "shared: this configuration was fine-tuned for an earlier budget or profile"})
        warnings = []
        if not trusted:  # the fallback: popularity-graded nested configurations only
            rho = "none" if signal["spearman"] is None else f"{signal['spearman']:.2f}"
            why = signal.get("reason") or (f"the performance estimator's held-out Spearman {rho} is below "
                                           f"{self.min_estimator_rho}")
            warnings.append(f"rule: {why}; the evolutionary pick was dropped and only "
                            "the nested (popularity-graded) configurations were compared on validation")
        return SearchResult(model=model, config=config, val=val, metric=metric, trace=trace,
                            timings={"supernet_s": supernet_s, "search_s": search_s,
                                     "retrain_s": tuned.seconds if tuned is not None else 0.0}, warnings=warnings)

    def _settings(self) -> dict[str, Any]:
        return {"finetune_epochs": self.finetune_epochs, "finetune_lr": self.finetune_lr, "dtype": self.dtype,
                "k": self.k, "l2": self.l2, "batch_size": self.batch_size, "patience": self.patience, "seed": self.seed}

    def _deploy_entry(self, net: _Supernet, ctx: SearchContext, mask: np.ndarray
                      ) -> tuple[dict[str, Any], FinetuneResult | None]:
        """The deployable form of ``mask``: from the registry when this configuration was already
        deployed with these settings (one fine-tune shared by every budget/profile that picks it),
        else fine-tuned (step 4), evaluated on validation and registered (and saved)."""
        settings = self._settings()
        entry_id = hashlib.sha256((_mask_digest(mask) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:20]
        if entry_id in net.deployed:
            return net.deployed[entry_id], None
        tuned = None
        users, items = net.model.user_embedding, net.model.item_embedding
        skip = self.finetune_epochs > 0 and past_deadline()  # past a time limit: deployed as searched, not registered
        if self.finetune_epochs > 0 and not skip:
            tuned = finetune_config(net.model, mask, ctx.data, epochs=self.finetune_epochs, lr=self.finetune_lr,
                                    batch_size=self.batch_size, l2=self.l2, patience=self.patience, k=self.k,
                                    seed=self.seed)
            users, items = tuned.model.user_embedding, tuned.model.item_embedding
        entry: dict[str, Any] = {"id": entry_id, "settings": settings, "mask": np.asarray(mask, dtype=bool).copy(),
                                 "users": copy.deepcopy(users.state_dict()) if tuned is not None else None,
                                 "items": copy.deepcopy(items.state_dict()) if tuned is not None else None}
        model = self._entry_model(net, entry)
        entry["val"] = val_metrics(model, ctx.data, k=self.k)
        if skip:
            entry["finetune_skipped"] = "time limit"
            return entry, None
        net.deployed[entry_id] = entry
        self._save_deployed(net)
        return entry, tuned

    def _entry_model(self, net: _Supernet, entry: dict[str, Any]) -> BPRMF:
        """The deployable model of a registry entry (the supernet's tables, or the fine-tuned ones)."""
        users = copy.deepcopy(net.model.user_embedding)
        items: ElasticBlockEmbedding = copy.deepcopy(net.model.item_embedding)  # type: ignore[assignment]
        if entry.get("users") is not None:
            users.load_state_dict(entry["users"])
            items.load_state_dict(entry["items"])
        items.set_config(None)
        model = BPRMF(users, ElasticSubsetEmbedding.from_elastic(items, entry["mask"], dtype=entry["settings"]["dtype"]))
        return model.eval()

    def _pick_on_validation(self, net: _Supernet, ctx: SearchContext,
                            candidates: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, dict[str, Any]]:
        """Step 3b: the candidate with the best true validation Recall@K on ``pick_users`` users.

        A fresh sample (seed + 1): the evolution's pick was optimised through an estimator fitted
        on the ``eval_users`` sample, so scoring it on those same users favours it. Measured with
        ``benchmarks/rule.py --dataset cds`` (3 elastic epochs) at 2 MB: picking on the estimator's
        users deployed the evolution's configuration (val Recall@20 0.0382, all users), picking
        on a fresh sample a nested one (0.0439; uniform 0.0430)."""
        scorer = ConfigScorer(net.model, topk_pairs(ctx.data, "train"), topk_pairs(ctx.data, "val"), k=self.k,
                              max_users=self.pick_users, seed=self.seed + 1)
        scores = []
        for _, mask in candidates:  # past a time limit, the candidates scored so far decide
            if scores and past_deadline():
                break
            scores.append(scorer(mask)[0])
        candidates = candidates[:len(scores)]
        i = int(np.argmax(scores))
        return candidates[i][1], {"source": candidates[i][0], "scored": dict(zip([c[0] for c in candidates], scores,
                                                                                 strict=True))}


def nested_configs(group_sizes: list[int], n_blocks: int, fits, tilts: tuple[float, ...] = NESTED_TILTS
                   ) -> list[tuple[str, np.ndarray]]:
    """Step 3b: popularity-graded leading-block configurations, the largest of each tilt that ``fits``.

    Group ``g`` (0 = most popular) keeps its first ``L_g = clip(floor(s·w_g), 1, n_b)`` blocks,
    ``w_g = 1 + tilt·(1 − g/(n_g − 1))``, with ``s`` the largest scale (bisection) that fits.
    The warm start orders blocks by singular value, so leading blocks are the strong ones. Why:
    the estimator is fitted on random-subset samples and misranks configurations far from them;
    on MovieLens-1M its pick scored below these (``rule`` vs ``rule+nested`` rows of
    ``benchmarks/results/rule_ml1m.md``).
    """
    n_g = len(group_sizes)
    rank = 1.0 - np.arange(n_g) / max(1, n_g - 1)
    out: list[tuple[str, np.ndarray]] = []
    seen: set[bytes] = set()
    for tilt in tilts:
        w = 1.0 + tilt * rank

        def mask_at(scale: float, w: np.ndarray = w) -> np.ndarray:
            lengths = np.clip(np.floor(scale * w), 1, n_blocks).astype(int)
            return np.arange(n_blocks)[None, :] < lengths[:, None]

        lo, hi = 0.0, float(n_blocks) + 1.0
        if not fits(mask_at(lo)):
            continue
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mask_at(mid)) else (lo, mid)
        mask = mask_at(lo)
        if mask.tobytes() not in seen:
            seen.add(mask.tobytes())
            out.append((f"nested tilt {tilt:g}", mask))
    return out


# ---------------------------------------------------------------------- per-budget fine-tuning (step 4)
@dataclass
class FinetuneResult:
    model: BPRMF  # users + ElasticBlockEmbedding fixed to the configuration (training form)
    val_before: dict[str, float]
    best_epoch: int  # 0: fine-tuning did not beat the configuration as searched
    history: list[dict[str, Any]]
    seconds: float


def finetune_config(supernet: BPRMF, mask: np.ndarray, data: EncodedDataset, *, epochs: int, lr: float,
                    batch_size: int, l2: float, patience: int, k: int, seed: int) -> FinetuneResult:
    """Step 4: BPR-train a copy of ``supernet`` scored by rule (1) with the fixed configuration ``mask``.

    Only the kept (group, block) values and the user slices they meet get gradients, so the
    trained copy deploys exactly (``ElasticSubsetEmbedding.from_elastic``). Epoch 0 (the
    configuration as searched) competes with every fine-tuned epoch on validation Recall@K.
    """
    t0 = time.perf_counter()
    model = copy.deepcopy(supernet)
    items: ElasticBlockEmbedding = model.item_embedding  # type: ignore[assignment]
    items.set_config(mask)  # applied in train and eval mode
    before = val_metrics(model, data, k=k)
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(seed)
    fit = fit_topk(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, patience=patience, l2=l2, k=k)
    metric = topk_metric_name(k)
    best_epoch = fit.best_epoch
    if fit.val.get(metric, -np.inf) <= before[metric]:
        model.load_state_dict(state)
        best_epoch = 0
    model.eval()
    return FinetuneResult(model=model, val_before=before, best_epoch=best_epoch, history=fit.history,
                          seconds=time.perf_counter() - t0)


def estimator_report(searcher: RULESearcher, ctx: SearchContext) -> dict[str, Any]:
    """The cached supernet's statistics (training time, estimator rank correlation)."""
    net = searcher.supernet(ctx)
    if "estimator_heldout" not in net.stats:
        raise BadInputError("too few sampled configurations to hold out 3 for the estimator report; raise n_samples")
    return net.stats
