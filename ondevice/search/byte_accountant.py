"""The byte accountant: how many bytes a model's exported file stores, and what a method may spend.

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

The first-order table and the dense layers are counted in the forms
:mod:`ondevice.search.fixed_parts` plans for them (``first_order``, ``mlp``).

Raw-feature artefacts carry their vocabulary in the file. By default ``compress`` reserves all
of it from the budget before the search (every key kept). A searcher that drops keys (rows
pruned to OOV in every table, ``Searcher.prunes_vocabulary``) gets a :class:`VocabularyCost`
instead: the encoder's fixed bytes plus the bytes of each id's keys, so a dropped id saves
its key as well as its row. Without one (the default) nothing here counts the vocabulary.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ondevice.budget import format_bytes
from ondevice.embedding import EmbeddingLayer, QuantizedEmbedding
from ondevice.embedding.base import stored_bytes
from ondevice.embedding.row_pruned import compact_rows
from ondevice.errors import BudgetTooSmallError
from ondevice.models import BPRMF, RecModel
from ondevice.models.int8_linear import Int8Linear, quantizable_linears, quantize_dense_layers_
from ondevice.search.fixed_parts import first_order_layer
from ondevice.vocabulary import dropped_ids

__all__ = ["DEFAULT_GRAPH_OVERHEAD_BYTES", "FORMAT_MARGIN_BYTES", "SHARED_PART", "VOCABULARY_PART", "ByteAccountant",
           "VocabularyCost", "itemise_bytes"]

# Graph bytes (node protos, value names, shapes) of a small CTR model when nothing was
# measured: the measured overhead of the test models is 2.3-2.6 KB for dense tables.
DEFAULT_GRAPH_OVERHEAD_BYTES = 4096
# Extra nodes of compressed formats over the dense graph (measured on DeepFM, 5 fields):
# mixed-dim +1.3 KB, int8 mixed-dim +2.5 KB, CSR sparse +1.5 KB, hashed +0.3 KB.
FORMAT_MARGIN_BYTES = 4096


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


@dataclass(frozen=True)
class VocabularyCost:
    """What a raw artefact's encoder adds to the file, as the ids a model keeps change it.

    ``fixed_bytes``: what no id's key takes (encoder nodes, constants, inputs, the tables'
    framing, shared tree nodes); ``per_id``: per field, float64 ``[vocab_f]``, the bytes of each
    id's keys (:func:`ondevice.vocabulary.key_bytes`; 0 for the OOV id); ``exact``: the
    encoder's bytes for a set of dropped ids as serialized (``ondevice.vocabulary.vocabulary_bytes``
    + the rest of the encoder), supplied by the pipeline like ``ByteAccountant.measure``.
    With every id kept, ``fixed_bytes + Σ per_id`` is the whole encoder.
    """

    fixed_bytes: int
    per_id: tuple[np.ndarray, ...]
    exact: Callable[[Mapping[int, set[int]]], int] | None = field(default=None, repr=False, compare=False)
    #: whether the encoder can emit a row-pruned model's re-indexed ids (``relabel[field][id]``,
    #: :func:`ondevice.vocabulary.relabel_applies`), so the file stores the kept rows without a remap
    reindexes: Callable[[list[Any]], bool] | None = field(default=None, repr=False, compare=False)

    def estimate(self, dropped: Mapping[int, set[int]]) -> int:
        """``fixed_bytes`` + the keys of every id not in ``dropped`` (additive, rounded up)."""
        kept = sum(float(a.sum()) - float(a[sorted(dropped.get(j, ()))].sum()) for j, a in enumerate(self.per_id))
        return self.fixed_bytes + math.ceil(kept)

    def bytes_for(self, dropped: Mapping[int, set[int]]) -> int:
        """The encoder's bytes with ``dropped`` left out: exact when the pipeline gave ``exact``."""
        return int(self.exact(dropped)) if self.exact is not None else self.estimate(dropped)


@dataclass
class ByteAccountant:
    """Splits a byte budget into the embedding's share and everything else.

    ``graph_overhead_bytes``: the ONNX graph's own bytes (file bytes minus parameter bytes),
    measured by ``compress`` on the full model; ``margin_bytes``: room for the extra nodes of
    a compressed embedding format; ``first_order``: the form the first-order (``linear``)
    table will be stored in (``keep`` | ``fp16`` | ``drop``), counted by the fixed bytes.
    ``measure``: exact bytes of a model's exported file, ``measure(model) -> int``, supplied by
    the pipeline (``ondevice.pipeline.measure.onnx_file_bytes``: an export to a temporary file);
    searchers read it through :meth:`file_bytes` and never import the exporter.
    ``vocabulary``: a raw artefact's encoder, counted with the ids the model keeps (module
    docstring); ``None`` (default): not counted here (the caller reserved it, or ids in).
    """

    graph_overhead_bytes: int = DEFAULT_GRAPH_OVERHEAD_BYTES
    margin_bytes: int = FORMAT_MARGIN_BYTES
    first_order: str = "keep"
    mlp: str = "fp32"
    measure: Callable[[nn.Module], int] | None = field(default=None, repr=False, compare=False)
    vocabulary: VocabularyCost | None = field(default=None, repr=False, compare=False)

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

    def dropped(self, model: nn.Module) -> dict[int, set[int]]:
        """Per field, the ids whose keys leave a raw artefact of ``model`` (rows pruned to OOV in
        every embedding table, :func:`ondevice.vocabulary.dropped_ids`, as the exporter decides)."""
        layers = [m for m in model.modules() if isinstance(m, EmbeddingLayer)]
        return dropped_ids(layers, list(layers[0].vocab_sizes)) if layers else {}

    def as_shipped(self, model: nn.Module) -> nn.Module:
        """``model`` as a raw artefact stores it: where every table keeps the same rows pruned to
        OOV and the encoder can emit their re-indexed ids (``vocabulary.reindexes``), the kept rows
        only, without the remap's 4 B per original id (the exporter's ``_raw_id_model``)."""
        if self.vocabulary is None or self.vocabulary.reindexes is None:
            return model
        compact = compact_rows(model)
        if compact is None or not self.vocabulary.reindexes(compact[1]):
            return model
        return compact[0]

    def vocabulary_bytes(self, model: nn.Module) -> int:
        """Bytes the raw encoder adds to ``model``'s file (0 without a :class:`VocabularyCost`)."""
        return 0 if self.vocabulary is None else self.vocabulary.bytes_for(self.dropped(model))

    def file_bytes_estimate(self, model: nn.Module) -> int:
        """Parameter bytes + the measured graph + the margin for a format's extra nodes
        (+ the vocabulary it keeps, with a :class:`VocabularyCost`)."""
        return (self.parameter_bytes(self.as_shipped(model)) + self.graph_overhead_bytes + self.margin_bytes
                + self.vocabulary_bytes(model))

    def file_bytes(self, model: nn.Module) -> int:
        """The exported file's bytes of ``model``: exact when the pipeline gave ``measure``,
        else :meth:`file_bytes_estimate` (+ the vocabulary it keeps, with a :class:`VocabularyCost`;
        the id model's file plus the encoder: an upper bound of the raw file)."""
        if self.measure is None:
            return self.file_bytes_estimate(model)
        return int(self.measure(self.as_shipped(model))) + self.vocabulary_bytes(model)

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
        """The graph's measured bytes and, apart, the margin kept for a format's extra nodes
        (and the raw encoder's fixed bytes, with a :class:`VocabularyCost`)."""
        parts = {"onnx graph": self.graph_overhead_bytes}
        if self.margin_bytes:
            parts["format margin"] = self.margin_bytes
        if self.vocabulary is not None:
            parts[VOCABULARY_PART] = self.vocabulary.fixed_bytes
        return parts

    def _vocabulary_fixed(self) -> int:
        return 0 if self.vocabulary is None else self.vocabulary.fixed_bytes

    def fixed_bytes(self, model: RecModel, compressible: str = "embedding") -> int:
        """Budget taken by everything except ``model.<compressible>`` (incl. graph + margin, and
        the raw encoder's fixed bytes with a :class:`VocabularyCost`; its keys are the method's)."""
        if isinstance(model, BPRMF):  # only the item table is exported; the user table stays on the server
            return self.graph_overhead_bytes + self.margin_bytes
        rest: list[torch.Tensor] = []
        for name, child in model.named_children():
            if name != compressible:
                rest.extend(self._fixed_tensors(name, child))
        rest.extend(t for k, t in model.state_dict().items() if "." not in k)
        return stored_bytes(rest) + self.graph_overhead_bytes + self.margin_bytes + self._vocabulary_fixed()

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
            vocabulary = self._vocabulary_fixed()
            if smallest_embedding == own:
                vocabulary = self.vocabulary_bytes(model)
                stored = self.planned_file_bytes(model) - self.graph_overhead_bytes - self.margin_bytes - vocabulary
            else:
                stored = smallest_embedding + self.fixed_bytes(model) - self.graph_overhead_bytes - self.margin_bytes
                stored -= vocabulary
            if stored != sum(parts.values()):
                parts[SHARED_PART] = stored - sum(parts.values())
            if self.vocabulary is not None:
                parts[VOCABULARY_PART] = vocabulary
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
#: The part of a raw artefact's encoder a :class:`VocabularyCost` counts (fixed bytes + kept keys).
VOCABULARY_PART = "vocabulary and encoder"


def itemise_bytes(parts: dict[str, int]) -> str:
    """``embedding 840 B + MLP (int8, hidden 16) 97 B + ... − shared 80 B``: a byte count's parts, one line."""
    text = ""
    for name, n in parts.items():
        text += (f" − {name} {-n:,} B" if n < 0 else f" + {name} {n:,} B") if text else f"{name} {n:,} B"
    return text
