"""The searcher protocol and the ``--method`` registry (DESIGN §7).

A searcher is configured once and run per budget (scikit-learn style)::

    searcher = SSEDSSearcher(epochs=5, seed=0)           # __init__ only stores settings
    result = searcher.search(checkpoint, data, 2_000_000)  # the work; never sees the test split
    manifest_entry = searcher.get_params()                 # JSON-able, rebuilds the searcher

``search`` returns a :class:`SearchResult`: the compressed (retrained) model, a config that
rebuilds its structure from the full checkpoint, the validation metric, a trace of what was
tried, the byte estimate and timings.

Bytes: :mod:`ondevice.search.byte_accountant` (what the exported file stores, what a method
may spend); the parts no method compresses (first-order table, MLP):
:mod:`ondevice.search.fixed_parts`, which :meth:`Searcher.search` runs every searcher through.
Searchers never export: exact bytes come from the pipeline, through the accountant.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ondevice.data import EncodedDataset
from ondevice.errors import BadInputError
from ondevice.models import BPRMF, CTRModel, RecModel
from ondevice.schema import Schema
from ondevice.search.byte_accountant import ByteAccountant
from ondevice.search.fixed_parts import search_with_fixed_parts
from ondevice.train.checkpoint import Checkpoint, load_checkpoint

__all__ = [
    "SEARCHERS",
    "RetrainingSearcher",
    "SearchContext",
    "SearchResult",
    "Searcher",
    "check_method_options",
    "make_config",
    "make_searcher",
    "method_names",
    "method_params",
    "register_searcher",
]


# ---------------------------------------------------------------------- result
@dataclass
class SearchResult:
    """What a searcher found for one budget.

    ``config`` rebuilds the compressed structure from the full checkpoint
    (``{"_type", "_version", "_data"}``, torchao's config shape); ``val`` holds the
    validation metrics of ``model`` (never the test split).
    """

    model: RecModel
    config: dict[str, Any]
    val: dict[str, float]
    metric: str
    trace: list[dict[str, Any]] = field(default_factory=list)
    bytes_estimate: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] | None = None  # ``auto``: every method it tried (pipeline/auto.py)
    schema: Schema | None = None  # the deployed input schema when the method changes the inputs (feature selection)
    # what the user must know about how the result was reached (a fallback taken, ...): the
    # CLI prints each as ``warning: ...`` and summary.md lists them
    warnings: list[str] = field(default_factory=list)
    # the inputs the result was sized for when it differs from the call's (``auto``'s raw
    # ``frequency`` candidate at a budget where the others take ids); ``None``: the call's
    inputs: str | None = None

    @property
    def val_metric(self) -> float:
        return float(self.val[self.metric])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no weights)."""
        return {"config": self.config, "val": self.val, "metric": self.metric, "trace": self.trace,
                "bytes_estimate": self.bytes_estimate, "timings": self.timings, "params": self.params,
                "model": self.model.describe(),
                **({"candidates": self.candidates} if self.candidates is not None else {}),
                **({"inputs": self.inputs} if self.inputs is not None else {})}

    def save(self, path: str | Path) -> None:
        """Write the result, weights included, atomically (data only: :meth:`load` reads it with
        ``weights_only=True``). A loaded result exports to the same bytes (``compress --resume``)."""
        import io
        import json

        from ondevice.io import _json_default, atomic_write_bytes

        meta = {"config": self.config, "val": self.val, "metric": self.metric, "trace": self.trace,
                "bytes_estimate": self.bytes_estimate, "timings": self.timings, "params": self.params,
                "candidates": self.candidates, "warnings": list(self.warnings), "inputs": self.inputs,
                "schema": self.schema.to_dict() if self.schema is not None else None,
                "training": [n for n, m in self.model.named_modules() if m.training],
                "frozen": [n for n, p in self.model.named_parameters() if not p.requires_grad]}
        payload = {"format": "ondevice-search-result", "model": json.dumps(self.model.describe(), default=_json_default),
                   "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                   "meta": json.dumps(meta, default=_json_default)}
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> SearchResult:
        """A result written by :meth:`save`; ``CheckpointError`` (one line) when it is unreadable."""
        import json

        from ondevice.errors import CheckpointError
        from ondevice.models import model_from_description

        try:
            payload = torch.load(Path(path), map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("format") != "ondevice-search-result":
                raise ValueError("not a saved search result")
            meta = json.loads(payload["meta"])
            model = model_from_description(json.loads(payload["model"]))
            model.load_state_dict(payload["state_dict"])
        except Exception as err:  # noqa: BLE001 - any failure: the file is not a result we can reuse
            raise CheckpointError(f"{path} is not a readable search result ({type(err).__name__}); "
                                  "start over with --force") from None
        training = set(meta["training"])
        for name, module in model.named_modules():
            module.training = name in training
        frozen = set(meta["frozen"])
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
        schema = Schema.from_dict(meta["schema"], source=str(path)) if meta["schema"] is not None else None
        return cls(model=model, config=meta["config"], val=meta["val"], metric=meta["metric"], trace=meta["trace"],
                   bytes_estimate=meta["bytes_estimate"], timings=meta["timings"], params=meta["params"],
                   candidates=meta["candidates"], schema=schema, warnings=meta["warnings"], inputs=meta.get("inputs"))


def make_config(type_name: str, data: dict[str, Any], version: int = 1) -> dict[str, Any]:
    return {"_type": type_name, "_version": version, "_data": data}


# ---------------------------------------------------------------------- searcher
class Searcher:
    """Base of every searcher: keyword-only settings in ``__init__``, work in ``search``.

    Subclasses set ``name`` and implement ``_search(ctx) -> SearchResult``; the base class
    loads inputs, checks the task, times the run and fills ``params``.
    """

    name: ClassVar[str] = "abstract"
    supports_dtype: ClassVar[bool] = False  # can compose with int8/fp16 (``--method X+int8``)
    tasks: ClassVar[tuple[str, ...]] = ("ctr",)  # "ctr" and/or "topk" (BPR-MF item table)
    delegates: ClassVar[bool] = False  # runs other searchers, which handle first_order / mlp (``auto``)
    # prunes rows to OOV in every table, so a raw artefact's keys leave with them (``frequency``):
    # ``compress`` then gives the accountant the vocabulary's per-id cost instead of reserving all of it
    prunes_vocabulary: ClassVar[bool] = False

    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments (JSON-able), read from the signature like sklearn."""
        sig = inspect.signature(type(self).__init__)
        out = {}
        for p in sig.parameters.values():
            if p.name == "self":
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{type(self).__name__}.__init__ must not take *args/**kwargs")
            out[p.name] = getattr(self, p.name)
        return out

    def expected_validation_passes(self, ckpt: Checkpoint, data: EncodedDataset) -> float:
        """Work beyond its ``*epochs`` settings, in full validation passes of the checkpoint's model
        (``auto`` orders and skips candidates by expected seconds); 0 for most searchers."""
        return 0.0

    def clone(self, **overrides: Any) -> Searcher:
        """A fresh searcher with the same settings (one per budget)."""
        params = {**self.get_params(), **overrides}
        return type(self)(**params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def search(self, checkpoint: str | Path | Checkpoint, data: str | Path | EncodedDataset, budget_bytes: int, *,
               accountant: ByteAccountant | None = None, work_dir: str | Path | None = None,
               mlp: str = "fp32", state_dir: str | Path | None = None) -> SearchResult:
        """Compress ``checkpoint``'s model so its exported file fits ``budget_bytes``.

        ``work_dir``: a folder where a once-for-all method may cache what it trained for
        all budgets (RULE's elastic model); ``None`` keeps such caches in memory only.
        ``mlp``: how the dense layers are stored, ``fp32`` | ``int8`` | ``auto`` (module docstring).
        ``state_dir``: a folder of this one search where a searcher that runs others (``auto``)
        keeps each finished candidate, so a killed ``compress`` resumes from them (``--resume``).
        """
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        ds = data if isinstance(data, EncodedDataset) else EncodedDataset(data)
        is_ctr = isinstance(ckpt.model, CTRModel) and ds.task == "ctr"
        is_topk = isinstance(ckpt.model, BPRMF) and ds.task == "topk"
        if not ((is_ctr and "ctr" in self.tasks) or (is_topk and "topk" in self.tasks)):
            if "ctr" in self.tasks and "topk" not in self.tasks:
                topk = ", ".join(sorted(n for n, c in SEARCHERS.items() if "topk" in c.tasks))
                raise BadInputError(f"method {self.name!r} compresses CTR models for now; {ckpt.model.name} "
                                    f"({ds.task}) is not supported yet; for top-K models use --method {topk}")
            raise BadInputError(f"method {self.name!r} compresses top-K (BPR-MF) models; {ckpt.model.name} ({ds.task}) "
                                "is not one; pick a CTR method (sseds, pep, mde, uniform, hash, int8, fp16)")
        vocab = ckpt.model.embedding.vocab_sizes if is_ctr else [ckpt.model.num_users, ckpt.model.num_items]  # type: ignore[union-attr]
        if list(ds.schema.vocab_sizes) != list(vocab):
            raise BadInputError("the dataset's vocabulary sizes differ from the checkpoint's; pass the data the model was trained on")
        if int(budget_bytes) < 1:
            raise BadInputError(f"budget must be >= 1 byte, got {budget_bytes}")
        ctx = SearchContext(ckpt=ckpt, data=ds, budget_bytes=int(budget_bytes), accountant=accountant or ByteAccountant(),
                            work_dir=Path(work_dir) if work_dir is not None else None, mlp=mlp,
                            state_dir=Path(state_dir) if state_dir is not None else None)
        started = time.perf_counter()
        # Reproducibility: whatever ran before in this process (another searcher, a model built
        # and discarded) must not change what this one draws. Without this, ``uniform`` built its
        # narrower MLP layer from the unseeded global stream: val AUC 0.7709 vs 0.7673 for two
        # identical calls in one process (tests/search/test_reproducible.py).
        torch.manual_seed(int(getattr(self, "seed", 0) or 0))
        first_order = getattr(self, "first_order", None)  # retraining CTR searchers: the shared option
        if self.delegates:  # ``auto``: its candidates apply the options themselves
            result = self._search(ctx)
        else:
            result = search_with_fixed_parts(self._search, ctx, first_order, mlp,
                                             narrow=isinstance(self, RetrainingSearcher))
        result.timings["total_s"] = time.perf_counter() - started
        result.params = {"method": self.method_name(), **self.get_params()}
        result.bytes_estimate = ctx.accountant.file_bytes_estimate(result.model)
        return result

    def method_name(self) -> str:
        dtype = getattr(self, "dtype", "float32")
        return self.name if dtype == "float32" or not self.supports_dtype else f"{self.name}+{_DTYPE_SUFFIX[dtype]}"

    def _search(self, ctx: SearchContext) -> SearchResult:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class SearchContext:
    ckpt: Checkpoint
    data: EncodedDataset
    budget_bytes: int
    accountant: ByteAccountant
    work_dir: Path | None = None
    mlp: str = "fp32"  # the --mlp option (``auto`` passes it to its candidates)
    state_dir: Path | None = None  # where ``auto`` keeps finished candidates (``compress --resume``)

    @property
    def model(self) -> CTRModel:
        return self.ckpt.model  # type: ignore[return-value]

    @property
    def task(self) -> str:
        return self.data.task


# ---------------------------------------------------------------------- registry
SEARCHERS: dict[str, type[Searcher]] = {}
_DTYPE_SUFFIX = {"int8": "int8", "float16": "fp16"}
_SUFFIX_DTYPE = {"int8": "int8", "fp16": "float16"}


def register_searcher(cls: type[Searcher]) -> type[Searcher]:
    SEARCHERS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Every ``--method`` value: base names and ``X+int8`` / ``X+fp16`` compositions."""
    names = sorted(SEARCHERS)
    return names + [f"{n}+{s}" for n in names if SEARCHERS[n].supports_dtype for s in ("int8", "fp16")]


def make_searcher(method: str, *, shared: dict[str, Any] | None = None, **params: Any) -> Searcher:
    """Build the searcher a ``--method`` value names; ``params`` override its defaults.

    A setting in ``params`` that the searcher does not have is a one-line error naming the
    ones it has (a typo such as ``treshold_init`` is never dropped silently). ``shared``
    holds options given to every method at once (``epochs``, ``seed``...): a method that does
    not take one ignores it. ``None`` values mean "the method's default".
    """
    base, _, suffix = method.partition("+")
    cls = SEARCHERS.get(base)
    if cls is None or (suffix and (suffix not in _SUFFIX_DTYPE or not cls.supports_dtype)):
        several = (f"; several methods are given as --method {method.split(',')[0].strip()} --method "
                   f"{method.split(',')[1].strip()} ..." if "," in method else "")
        raise BadInputError(f"unknown --method {method!r}{several}; choose one of: {', '.join(method_names())}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise BadInputError(f"{base} has no setting {unknown[0]!r}; its settings: {', '.join(sorted(accepted))}")
    kwargs = {k: v for k, v in (shared or {}).items() if k in accepted and v is not None}
    kwargs.update({k: v for k, v in params.items() if v is not None})
    if suffix:
        kwargs["dtype"] = _SUFFIX_DTYPE[suffix]
    return cls(**kwargs)


def method_params(options: dict[str, dict[str, Any]], method: str) -> dict[str, Any]:
    """``method``'s settings from per-method options (``--method-option``): the base name's
    (``pep``) with the exact name's (``pep+fp16``) on top."""
    base = method.partition("+")[0]
    return {**options.get(base, {}), **(options.get(method, {}) if method != base else {})}


def check_method_options(options: dict[str, dict[str, Any]]) -> None:
    """One-line error for a per-method option whose method or setting does not exist,
    naming the settings the method has (a typo is never dropped silently)."""
    for method, params in options.items():
        base, _, suffix = method.partition("+")
        cls = SEARCHERS.get(base)
        if cls is None or (suffix and suffix not in _SUFFIX_DTYPE):
            raise BadInputError(f"--method-option names unknown method {method!r}; choose one of: "
                                f"{', '.join(method_names())}")
        accepted = sorted(set(inspect.signature(cls.__init__).parameters) - {"self"})
        for key in params:
            if key not in accepted:
                raise BadInputError(f"--method-option {method}.{key}: {base} has no setting {key!r}; "
                                    f"its settings: {', '.join(accepted)}")


Factory = Callable[..., Searcher]


class RetrainingSearcher(Searcher):
    """A searcher that retrains what it built with the shared loop (``search.retrain``).

    Subclasses store ``epochs``, ``lr``, ``batch_size``, ``seed`` and ``patience``.
    """

    epochs: int
    lr: float
    batch_size: int
    seed: int
    patience: int

    def _retrain(self, ctx: SearchContext, model: RecModel, **kwargs: Any):
        from ondevice.search.retrain import fit_ctr, fit_topk

        torch.manual_seed(self.seed)
        if isinstance(model, BPRMF):
            return fit_topk(model, ctx.data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                            seed=self.seed, patience=self.patience, **kwargs)
        return fit_ctr(model, ctx.data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                       seed=self.seed, patience=self.patience, **kwargs)
