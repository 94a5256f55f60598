"""The searcher protocol, the ``--method`` registry and the shared byte accountant (DESIGN §7).

A searcher is configured once and run per budget (scikit-learn style)::

    searcher = SSEDSSearcher(epochs=5, seed=0)           # __init__ only stores settings
    result = searcher.search(checkpoint, data, 2_000_000)  # the work; never sees the test split
    manifest_entry = searcher.get_params()                 # JSON-able, rebuilds the searcher

``search`` returns a :class:`SearchResult`: the compressed (retrained) model, a config that
rebuilds its structure from the full checkpoint, the validation metric, a trace of what was
tried, the byte estimate and timings.

Bytes are the truth. :class:`ByteAccountant` splits a budget into what the method may spend
on the compressible embedding (``model.embedding``) and everything else: the other
parameters and buffers (MLP, biases, the dim-1 ``linear`` table, stored once per distinct
value as the exporter does) plus the ONNX graph itself (node protos, names, shapes), which
``compress`` measures by exporting the full model once and pads by ``FORMAT_MARGIN_BYTES``
for the extra nodes a compressed format adds (measured: 1-3 KB). The exported file is
still checked against the budget afterwards, every time.

Top-K models (BPR-MF): the artefact holds only the item table (the user table stays on the
server, the device receives its user's vector), so the accountant counts the item
embedding's deployable tensors plus the graph; ``compressible`` is ``item_embedding``.

First-order table (CTR models' dim-1 ``linear``, 4 B per id): no method compresses it, so
every retraining CTR searcher takes ``first_order`` (``"auto"`` default), resolved in one
place, :func:`search_with_fixed_parts`:

* ``"keep"``: fp32 table, counted as fixed bytes (the behaviour before the option);
* ``"fp16"``: retrained in fp32, then stored as a frozen fp16 :class:`QuantizedEmbedding`
  (2 B per id + 16 B per field); the accountant counts that form's exact bytes;
* ``"drop"``: ``model.linear = None`` before the search, 0 B; the retrain learns without it;
* ``"auto"``: ``keep`` if the method's smallest model fits with it, else ``fp16``, else
  ``drop`` (whose ``BudgetTooSmallError`` is then the one raised: the smallest option).

The choice is recorded in the result's trace (``{"first_order": ...}``) and config
(``_data["first_order"]``).

Dense layers (the MLP of DeepFM & co., ``--mlp``, one option for every CTR searcher): no
embedding method shrinks them, and in a Frappe-size DeepFM they are 86 % of the file.

* ``"fp32"``: stored as trained (the default of the Python API);
* ``"int8"``: after the search, every dense ``nn.Linear`` outside the embedding layers is
  stored as an :class:`~ondevice.models.int8_linear.Int8Linear` (int8 weight + one fp32 scale
  per output row); the accountant counts that form, and the validation metric is read on it;
* ``"auto"`` (``compress``'s default): fp32 while the method's smallest model fits with it,
  else int8, else — for retraining searchers on models with a plain MLP — an int8 MLP
  narrowed to ½, ¼, ⅛, 1/16 of every hidden layer's neurons
  (:mod:`ondevice.models.narrow_mlp`: the highest-magnitude neurons keep their trained
  weights, the searcher's retraining adapts the model). The widest MLP that lets the method
  fit is taken; that is a preference rule, not a search over the split of bytes between
  the MLP and the embedding. With ``first_order="auto"`` the combined order is (keep, fp32),
  (fp16, fp32), (keep, int8), (fp16, int8), then (drop, fp32), (drop, int8), then the
  narrowed MLPs, each with keep / fp16 / drop: storage changes before removing parameters,
  and the first-order table before MLP neurons. (On the synthetic Criteo-like set at 1/30
  of the bytes, ``hash+int8`` with the table dropped and the MLP kept reaches test AUC 0.823,
  ``benchmarks/results/compress_quality_synthetic.md``; an earlier run that narrowed the MLP
  first to keep an fp16 table did clearly worse.)

Recorded in the trace (``{"mlp": ...}``) and config (``_data["mlp"]``, and
``_data["mlp_dims"]`` when narrowed).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ondevice.budget import format_bytes
from ondevice.data import EncodedDataset
from ondevice.embedding import EmbeddingLayer, QuantizedEmbedding
from ondevice.embedding.base import stored_bytes
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.models import BPRMF, CTRModel, RecModel
from ondevice.models.int8_linear import Int8Linear, quantizable_linears, quantize_dense_layers_
from ondevice.models.narrow_mlp import can_narrow, narrow_mlp_
from ondevice.schema import Schema
from ondevice.train.checkpoint import Checkpoint, load_checkpoint

__all__ = [
    "DEFAULT_GRAPH_OVERHEAD_BYTES",
    "FIRST_ORDER_OPTIONS",
    "FORMAT_MARGIN_BYTES",
    "MLP_OPTIONS",
    "SEARCHERS",
    "ByteAccountant",
    "SearchResult",
    "RetrainingSearcher",
    "SearchContext",
    "Searcher",
    "first_order_layer",
    "itemise_bytes",
    "make_searcher",
    "method_names",
    "register_searcher",
    "search_with_fixed_parts",
]

# Graph bytes (node protos, value names, shapes) of a small CTR model when nothing was
# measured: the measured overhead of the test models is 2.3-2.6 KB for dense tables.
DEFAULT_GRAPH_OVERHEAD_BYTES = 4096
# Extra nodes of compressed formats over the dense graph (measured on DeepFM, 5 fields):
# mixed-dim +1.3 KB, int8 mixed-dim +2.5 KB, CSR sparse +1.5 KB, hashed +0.3 KB.
FORMAT_MARGIN_BYTES = 4096
# How the CTR first-order (dim-1 ``linear``) table is stored (module docstring).
FIRST_ORDER_OPTIONS = ("auto", "keep", "fp16", "drop")
# How the dense (MLP) layers are stored (module docstring).
MLP_OPTIONS = ("auto", "fp32", "int8")
# ``auto``'s narrower int8 MLPs: the fraction of hidden neurons kept is 1 / divisor.
MLP_NARROWING = (2, 4, 8, 16)


# ---------------------------------------------------------------------- bytes


def _deployable_tensors(module: nn.Module) -> list[torch.Tensor]:
    """What the exported file stores for ``module``: deployable embedding tensors + the rest."""
    if isinstance(module, BPRMF):  # top-K: the artefact stores the item table only
        return list(module.item_embedding.storage_tensors())
    out: list[torch.Tensor] = []
    emb_prefixes: list[str] = []
    for name, sub in module.named_modules():
        if isinstance(sub, EmbeddingLayer) and not any(name.startswith(p) for p in emb_prefixes):
            emb_prefixes.append(f"{name}.")
            out.extend(sub.storage_tensors())
    prefixes = tuple(emb_prefixes)
    out.extend(t for k, t in module.state_dict().items()
               if not k.startswith(prefixes) and not k.endswith("num_batches_tracked"))
    return out


@dataclass
class ByteAccountant:
    """Splits a byte budget into the embedding's share and everything else.

    ``graph_overhead_bytes``: the ONNX graph's own bytes (file bytes minus parameter bytes),
    measured by ``compress`` on the full model; ``margin_bytes``: room for the extra nodes of
    a compressed embedding format; ``first_order``: the form the first-order (``linear``)
    table will be stored in (``keep`` | ``fp16`` | ``drop``), counted by the fixed bytes.
    """

    graph_overhead_bytes: int = DEFAULT_GRAPH_OVERHEAD_BYTES
    margin_bytes: int = FORMAT_MARGIN_BYTES
    first_order: str = "keep"
    mlp: str = "fp32"

    def _planned_child(self, name: str, child: nn.Module) -> nn.Module | None:
        """A non-compressed child in its planned stored form: ``linear`` per ``first_order``,
        dense layers in int8 when ``mlp == "int8"`` (a copy; the model is untouched)."""
        if name == "linear" and isinstance(child, EmbeddingLayer):
            return first_order_layer(child, self.first_order)
        if self.mlp == "int8" and not isinstance(child, EmbeddingLayer) and quantizable_linears(child):
            child = copy.deepcopy(child)
            quantize_dense_layers_(child)
        return child

    def _fixed_tensors(self, name: str, child: nn.Module) -> list[torch.Tensor]:
        """Deployable tensors of a non-compressed child in its planned form."""
        planned = self._planned_child(name, child)
        return [] if planned is None else _deployable_tensors(planned)

    def parameter_bytes(self, model: nn.Module) -> int:
        """Exact bytes of every tensor the exported file stores for ``model`` (deployable form)."""
        return stored_bytes(_deployable_tensors(model))

    def file_bytes_estimate(self, model: nn.Module) -> int:
        return self.parameter_bytes(model) + self.graph_overhead_bytes + self.margin_bytes

    def planned_file_bytes(self, model: RecModel) -> int:
        """``file_bytes_estimate`` with the first-order table and the dense layers in their planned
        forms (``first_order``, ``mlp``), for a candidate model still holding the fp32 parts it trains with."""
        if self.first_order == "keep" and self.mlp == "fp32":
            return self.file_bytes_estimate(model)
        view = copy.copy(model)  # shallow: only planned children differ, the model is untouched
        view._modules = {name: (child if child is None or name == "embedding" else self._planned_child(name, child))
                         for name, child in model._modules.items()}
        return self.file_bytes_estimate(view)

    def fixed_parts(self, model: RecModel, compressible: str = "embedding") -> dict[str, int]:
        """Bytes of what the method does not compress, by top-level module (+ the graph)."""
        if isinstance(model, BPRMF):
            return self._graph_parts()
        parts: dict[str, int] = {}
        for name, child in model.named_children():
            if name == compressible:
                continue
            n = stored_bytes(self._fixed_tensors(name, child))
            if n:
                parts[name] = n
        own = [t for k, t in model.state_dict().items() if "." not in k]
        if own:
            parts["biases"] = stored_bytes(own)
        parts.update(self._graph_parts())
        return parts

    def _graph_parts(self) -> dict[str, int]:
        """The graph's measured bytes and, apart, the margin kept for a format's extra nodes."""
        parts = {"onnx graph": self.graph_overhead_bytes}
        if self.margin_bytes:
            parts["format margin"] = self.margin_bytes
        return parts

    def fixed_bytes(self, model: RecModel, compressible: str = "embedding") -> int:
        """Budget taken by everything except ``model.<compressible>`` (incl. graph + margin)."""
        if isinstance(model, BPRMF):  # only the item table is exported; the user table stays on the server
            return self.graph_overhead_bytes + self.margin_bytes
        rest: list[torch.Tensor] = []
        for name, child in model.named_children():
            if name != compressible:
                rest.extend(self._fixed_tensors(name, child))
        rest.extend(t for k, t in model.state_dict().items() if "." not in k)
        return stored_bytes(rest) + self.graph_overhead_bytes + self.margin_bytes

    def embedding_target(self, model: RecModel, budget_bytes: int, compressible: str = "embedding") -> int:
        """Bytes ``model.<compressible>`` may take in its deployable form."""
        return budget_bytes - self.fixed_bytes(model, compressible)

    def minimum_parts(self, model: RecModel, smallest_embedding: int | None = None,
                      embedding_label: str | None = None) -> dict[str, int]:
        """Every part of the bytes of ``model``'s smallest form, each named with the form it is counted in.

        ``smallest_embedding``: the bytes of the smallest compressible table the method can
        build (default: ``model``'s own, in its deployable form). The parts are the embedding,
        the first-order table (fp32 / fp16 / dropped), the MLP (fp32 / int8, with its widths),
        any other layer, the biases, the ONNX graph's own bytes (measured on the full model) and
        the format margin; they add up to :meth:`fixed_bytes` + the embedding. This one function
        is what every "too small" message itemises (``search`` commands, ``compress --method``,
        ``auto``, the architecture search).
        """
        topk = isinstance(model, BPRMF)
        compressible = "item_embedding" if topk else "embedding"
        table = getattr(model, compressible, None)
        own = stored_bytes(table.storage_tensors()) if isinstance(table, EmbeddingLayer) else 0
        if smallest_embedding is None:
            smallest_embedding = own
        parts = {embedding_label or ("item table" if topk else "embedding"): int(smallest_embedding)}
        if not topk:
            for name, child in model.named_children():
                if name == compressible:
                    continue
                n = stored_bytes(self._fixed_tensors(name, child))
                if name == "linear" and isinstance(child, EmbeddingLayer):
                    form = {"keep": "fp32", "fp16": "fp16", "drop": "dropped"}.get(self.first_order, self.first_order)
                    if isinstance(child, QuantizedEmbedding) and self.first_order == "keep":
                        form = child.dtype_name.replace("float", "fp")
                    parts[f"first-order table ({form})"] = n
                elif name == "mlp" or quantizable_linears(child):
                    dims = getattr(model, "mlp_dims", None) if name == "mlp" else None
                    int8 = self.mlp == "int8" or any(isinstance(m, Int8Linear) for m in child.modules())
                    widths = f", hidden {'-'.join(map(str, dims))}" if dims else ""
                    parts[f"{'MLP' if name == 'mlp' else name} ({'int8' if int8 else 'fp32'}{widths})"] = n
                elif n:
                    parts[name] = n
            if getattr(model, "linear", "absent") is None:  # dropped before the search (first_order=drop)
                parts["first-order table (dropped)"] = 0
            first = [k for k in parts if k.startswith("first-order")]  # order: embedding, first-order, the rest
            parts = {**{k: parts[k] for k in list(parts)[:1] + first}, **parts}
            biases = [t for k, t in model.state_dict().items() if "." not in k]
            if biases:
                parts["biases"] = stored_bytes(biases)
            # the file stores a tensor once however many layers hold it (e.g. the field offsets of
            # int8 tables): the parts above count it in each
            if smallest_embedding == own:
                stored = self.planned_file_bytes(model) - self.graph_overhead_bytes - self.margin_bytes
            else:
                stored = smallest_embedding + self.fixed_bytes(model) - self.graph_overhead_bytes - self.margin_bytes
            if stored != sum(parts.values()):
                parts[SHARED_PART] = stored - sum(parts.values())
        parts["ONNX graph"] = self.graph_overhead_bytes
        parts["format margin"] = self.margin_bytes
        return parts

    def too_small(self, method: str, budget_bytes: int, minimum_bytes: int, model: RecModel,
                  smallest_embedding: int | None = None, what: str | None = None) -> BudgetTooSmallError:
        """The one-line error: the minimum, itemised by :meth:`minimum_parts` (``what`` names
        the embedding part when it is not the method's smallest table, e.g. one field alone)."""
        label = "smallest embedding" if smallest_embedding is not None else None
        if what:
            label = what if what.startswith(("embedding", "item table")) else f"embedding of {what}"
        parts = self.minimum_parts(model, smallest_embedding, embedding_label=label)
        rest = minimum_bytes - sum(parts.values())
        if rest:  # structures of the method that are not a layer of the model (should not happen)
            parts["other"] = rest
        return BudgetTooSmallError(
            f"budget {format_bytes(budget_bytes)} is below the smallest model {method} can build, "
            f"{format_bytes(minimum_bytes)} = {itemise_bytes(parts)}; raise the budget or pick another --method",
            minimum_bytes=minimum_bytes, parts=parts)


#: The (negative) part of :meth:`ByteAccountant.minimum_parts` for tensors two layers share.
SHARED_PART = "tensors two parts share (stored once)"


def itemise_bytes(parts: dict[str, int]) -> str:
    """``embedding 840 B + MLP (int8, hidden 16) 97 B + ... − shared 80 B``: a byte count's parts, one line."""
    text = ""
    for name, n in parts.items():
        text += (f" − {name} {-n:,} B" if n < 0 else f" + {name} {n:,} B") if text else f"{name} {n:,} B"
    return text


def first_order_layer(layer: EmbeddingLayer, form: str) -> EmbeddingLayer | None:
    """The first-order table ``layer`` stored as ``form``: itself, fp16 (frozen) or ``None``."""
    if form == "keep":
        return layer
    if form == "drop":
        return None
    if form == "fp16":
        if isinstance(layer, QuantizedEmbedding) and layer.dtype_name == "float16":
            return layer
        return QuantizedEmbedding.from_dense(layer, dtype="float16")
    raise BadInputError(f"first_order must be one of {', '.join(FIRST_ORDER_OPTIONS[1:])}; got {form!r}")


def _form_order(first_order: list[str | None], mlp: list[str]) -> list[tuple[str | None, str]]:
    """(first-order form, MLP form) pairs in order of preference (module docstring): storage
    changes first, then dropping the first-order table, then narrowing the MLP."""
    full_width = [m for m in mlp if "/" not in m]
    narrowed = [m for m in mlp if "/" in m]
    kept = [(f, m) for m in full_width for f in first_order if f != "drop"]
    dropped = [(f, m) for m in full_width for f in first_order if f == "drop"]
    return kept + dropped + [(f, m) for m in narrowed for f in first_order]


def _mlp_form(form: str) -> tuple[str, int]:
    """``"int8/4"`` -> (``"int8"``, 4): the dtype and the width divisor of an MLP form."""
    dtype, _, div = form.partition("/")
    return dtype, int(div or 1)


def _form_context(ctx: SearchContext, form: str | None, mlp_form: str) -> SearchContext:
    """``ctx`` with the full model's first-order table and MLP in one (first-order, MLP) form:
    the table dropped and/or the MLP narrowed on a copy, the accountant counting that form."""
    model = ctx.ckpt.model
    mlp_dtype, divisor = _mlp_form(mlp_form)
    if form == "drop" or divisor > 1:
        model = copy.deepcopy(model)
        if form == "drop":
            model.linear = None
        if divisor > 1:
            narrow_mlp_(model, 1 / divisor)
    acc = dataclasses.replace(ctx.accountant, first_order=form or "keep", mlp=mlp_dtype)
    return dataclasses.replace(ctx, ckpt=dataclasses.replace(ctx.ckpt, model=model), accountant=acc)


def _narrower_form(ctx: SearchContext, run: Callable[[SearchContext], SearchResult],
                   later: list[tuple[str | None, str]], divisor: int) -> tuple[str | None, str, SearchResult] | None:
    """The first later form whose MLP is narrower than ``divisor`` and fits: (first-order form,
    MLP form, its result), or ``None`` when there is none (or it does not fit)."""
    form, mlp_form = next(((f, m) for f, m in later if _mlp_form(m)[1] > divisor), (None, ""))
    if not mlp_form:
        return None
    try:
        return form, mlp_form, run(_form_context(ctx, form, mlp_form))
    except BudgetTooSmallError:
        return None


def search_with_fixed_parts(run: Callable[[SearchContext], SearchResult], ctx: SearchContext,
                            option: str | None, mlp: str = "fp32", narrow: bool = False) -> SearchResult:
    """Run ``run(ctx)`` with the first-order table and the dense layers in the forms the options pick.

    ``option``: the first-order option (``None``: the searcher does not handle that table and
    it is left as it is); ``mlp``: ``fp32`` | ``int8`` | ``auto`` (module docstring).
    ``narrow``: whether ``auto`` may narrow the MLP (retraining searchers only).
    ``auto`` options try the forms in :func:`_form_order` and move on when the method's
    ``BudgetTooSmallError`` (raised before any training) says its smallest model does not
    fit; the last error is raised. Models without these parts run unchanged.
    """
    if option is not None and option not in FIRST_ORDER_OPTIONS:
        raise BadInputError(f"first_order must be one of {', '.join(FIRST_ORDER_OPTIONS)}; got {option!r}")
    if mlp not in MLP_OPTIONS:
        raise BadInputError(f"--mlp must be one of {', '.join(MLP_OPTIONS)}; got {mlp!r}")
    full = ctx.ckpt.model
    is_ctr = isinstance(full, CTRModel)
    has_linear = option is not None and is_ctr and full.linear is not None
    has_dense = is_ctr and bool(quantizable_linears(full))
    if mlp == "int8" and not has_dense:
        raise BadInputError(f"--mlp int8: {full.name} has no dense (MLP) layers to store in int8; use --mlp auto or fp32")
    fo_forms: list[str | None] = (["keep", "fp16", "drop"] if option == "auto" else [option]) if has_linear else [None]
    mlp_forms = (["fp32", "int8"] if mlp == "auto" else [mlp]) if has_dense else ["fp32"]
    if mlp == "auto" and narrow and can_narrow(full):
        mlp_forms += [f"int8/{d}" for d in MLP_NARROWING]
    forms = _form_order(fo_forms, mlp_forms)
    if forms == [(None, "fp32")]:
        return run(ctx)
    tried: list[dict[str, Any]] = []
    failed: tuple[int, int] | None = None  # (fixed bytes, minimum bytes) of the last form that did not fit
    last_error: BudgetTooSmallError | None = None
    for i, (form, mlp_form) in enumerate(forms):
        mlp_dtype, divisor = _mlp_form(mlp_form)
        sub = _form_context(ctx, form, mlp_form)
        fixed = sub.accountant.fixed_bytes(sub.ckpt.model)
        if failed is not None and failed[0] - fixed < failed[1] - ctx.budget_bytes and i < len(forms) - 1:
            # This form only changes fixed parts; it saves too little to close the last gap, so
            # running the method again (some search before they can tell) is skipped. The last
            # (smallest) form always runs: its error states the method's true minimum.
            tried.append({"first_order": form, "mlp": mlp_form, "skipped": f"saves {failed[0] - fixed:,} B, "
                          f"needs {failed[1] - ctx.budget_bytes:,} B"})
            continue
        try:
            result = run(sub)
        except BudgetTooSmallError as err:
            last_error = err
            tried.append({"first_order": form, "mlp": mlp_form, "minimum_bytes": err.minimum_bytes})
            failed = (fixed, err.minimum_bytes) if err.minimum_bytes is not None else None
            continue
        break
    else:
        assert last_error is not None  # the first form always runs
        raise last_error
    if mlp == "auto" and narrow and mlp_dtype == "int8":
        # The widest int8 MLP that fits can leave the table almost nothing (Frappe, MLP 400³ at ¼
        # of the bytes: PEP kept 426 table values). One step narrower frees bytes for the
        # embedding; both are retrained and the better validation metric is kept.
        alternative = _narrower_form(ctx, run, forms[i + 1:], divisor)
        if alternative is not None:
            alt_form, alt_mlp_form, alt_result = alternative
            tried.append({"first_order": alt_form, "mlp": alt_mlp_form, "val_metric": alt_result.val_metric,
                          "against": {"mlp": mlp_form, "val_metric": result.val_metric}})
            if alt_result.val_metric > result.val_metric:
                form, mlp_form, result = alt_form, alt_mlp_form, alt_result
                mlp_dtype, divisor = _mlp_form(mlp_form)
    out = result.model
    changed = False
    if form == "fp16" and isinstance(out, CTRModel) and out.linear is not None:
        out.linear = first_order_layer(out.linear, "fp16")
        changed = True
    if mlp_dtype == "int8" and quantizable_linears(out):
        quantize_dense_layers_(out)
        changed = True
    if changed:  # the deployed (fp16 table / int8 MLP) model's metrics
        from ondevice.search.retrain import val_metrics

        data = ctx.data if result.schema is None else ctx.data.select_fields(  # feature selection: its kept fields
            ctx.data.schema.field_positions(result.schema.field_names))
        result.val = val_metrics(out, data)
        out.eval()
    linear = getattr(out, "linear", None)
    entry: dict[str, Any] = {"mlp": mlp_form, "mlp_option": mlp, "tried": tried}
    if divisor > 1:
        entry["mlp_dims"] = list(out.mlp_dims)
    if form is not None:
        entry = {"first_order": form, "option": option, **entry,
                 "first_order_bytes": linear.storage_bytes() if linear is not None else 0}
    result.trace.append(entry)
    if isinstance(result.config.get("_data"), dict):
        if form is not None:
            result.config["_data"]["first_order"] = form
        result.config["_data"]["mlp"] = mlp_form
        if divisor > 1:
            result.config["_data"]["mlp_dims"] = list(out.mlp_dims)
    return result


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
    candidates: list[dict[str, Any]] | None = None  # ``auto``: every method it tried (search/auto.py)
    schema: Schema | None = None  # the deployed input schema when the method changes the inputs (feature selection)
    # what the user must know about how the result was reached (a fallback taken, ...): the
    # CLI prints each as ``warning: ...`` and summary.md lists them
    warnings: list[str] = field(default_factory=list)

    @property
    def val_metric(self) -> float:
        return float(self.val[self.metric])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no weights)."""
        return {"config": self.config, "val": self.val, "metric": self.metric, "trace": self.trace,
                "bytes_estimate": self.bytes_estimate, "timings": self.timings, "params": self.params,
                "model": self.model.describe(),
                **({"candidates": self.candidates} if self.candidates is not None else {})}

    def save(self, path: str | Path) -> None:
        """Write the result, weights included, atomically (data only: :meth:`load` reads it with
        ``weights_only=True``). A loaded result exports to the same bytes (``compress --resume``)."""
        import io
        import json

        from ondevice.io import _json_default, atomic_write_bytes

        meta = {"config": self.config, "val": self.val, "metric": self.metric, "trace": self.trace,
                "bytes_estimate": self.bytes_estimate, "timings": self.timings, "params": self.params,
                "candidates": self.candidates, "warnings": list(self.warnings),
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
                   candidates=meta["candidates"], schema=schema, warnings=meta["warnings"])


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
        raise BadInputError(f"unknown --method {method!r}; choose one of: {', '.join(method_names())}")
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
