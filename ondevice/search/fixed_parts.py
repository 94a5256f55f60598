"""The fixed-parts planner: how the parts no method compresses are stored (first-order table, MLP).

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
  and the first-order table before MLP neurons (an unrecorded early run that narrowed the
  MLP first to keep an fp16 table scored worse; the forms this order picks, and their test
  AUC, are in the 1/30 rows of ``benchmarks/results/compress_quality_synthetic.md``).

Recorded in the trace (``{"mlp": ...}``) and config (``_data["mlp"]``, and
``_data["mlp_dims"]`` when narrowed).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ondevice.embedding import EmbeddingLayer, QuantizedEmbedding, RowPrunedEmbedding
from ondevice.errors import BadInputError, BudgetTooSmallError
from ondevice.models import CTRModel
from ondevice.models.int8_linear import quantizable_linears, quantize_dense_layers_
from ondevice.models.narrow_mlp import can_narrow, narrow_mlp_

if TYPE_CHECKING:  # the protocol (search.base) runs this planner; no import cycle at runtime
    from ondevice.search.base import SearchContext, SearchResult

__all__ = ["FIRST_ORDER_OPTIONS", "MLP_NARROWING", "MLP_OPTIONS", "first_order_layer", "search_with_fixed_parts"]

# How the CTR first-order (dim-1 ``linear``) table is stored (module docstring).
FIRST_ORDER_OPTIONS = ("auto", "keep", "fp16", "drop")
# How the dense (MLP) layers are stored (module docstring).
MLP_OPTIONS = ("auto", "fp32", "int8")
# ``auto``'s narrower int8 MLPs: the fraction of hidden neurons kept is 1 / divisor.
MLP_NARROWING = (2, 4, 8, 16)


def first_order_layer(layer: EmbeddingLayer, form: str) -> EmbeddingLayer | None:
    """The first-order table ``layer`` stored as ``form``: itself, fp16 (frozen) or ``None``."""
    if form == "keep":
        return layer
    if form == "drop":
        return None
    if form == "fp16":
        if isinstance(layer, QuantizedEmbedding) and layer.dtype_name == "float16":
            return layer
        if isinstance(layer, RowPrunedEmbedding):  # rows pruned to OOV stay pruned (their keys stay out)
            return layer.with_dtype("float16")
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
