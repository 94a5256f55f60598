"""The embedding-layer seam: every model looks features up through one of these.

An embedding layer maps int64 ids ``[batch, fields]`` to float vectors
``[batch, fields, dim]``. Compression swaps the layer, never the model: dense tables,
masked/sparse rows (PEP, DeepLight), mixed dimensions with projections (SSEDS, MDE,
AutoDim), elastic blocks (RULE), quantized rows (int8/fp16) and hashed rows all implement
this one interface.

The contract every implementation keeps:

* ``forward`` maps any id outside ``[0, vocab_size)`` (negative ids included) to the
  field's OOV row 0 *inside the computation*, so the exported ONNX graph does the same
  and never crashes or wraps around on bad ids.
* ``forward`` uses only operators that export to ONNX and run in ONNX Runtime's mobile
  builds (Gather, Where, comparisons, MatMul, Cast, Mul, Add, Concat, Reshape, ...).
* ``storage_tensors()`` are exactly the tensors the exported file stores for this layer,
  so ``storage_bytes()`` is the exact byte count they occupy there. A layer in a
  training-time form (e.g. with a mask) returns its deployable form from
  ``to_deployable()`` and reports that form's bytes.
* ``spec()`` is a JSON-able dict from which ``embedding_from_spec`` rebuilds an empty
  layer of the same shape; ``load_state_dict`` then restores the values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ondevice.errors import BadInputError

_EMBEDDING_TYPES: dict[str, type[EmbeddingLayer]] = {}


def register_embedding(cls: type[EmbeddingLayer]) -> type[EmbeddingLayer]:
    """Class decorator: make ``cls`` revivable from its ``spec()`` by type name."""
    _EMBEDDING_TYPES[cls.type_name] = cls
    return cls


def embedding_from_spec(spec: dict[str, Any]) -> EmbeddingLayer:
    """Rebuild an (uninitialised) embedding layer from ``layer.spec()``.

    Only classes registered with ``@register_embedding`` can be revived: a checkpoint can
    never name an arbitrary import.
    """
    try:
        cls = _EMBEDDING_TYPES[spec["type"]]
    except KeyError:
        known = ", ".join(sorted(_EMBEDDING_TYPES))
        raise BadInputError(f"unknown embedding type {spec.get('type')!r}; known types: {known}") from None
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    return cls(**kwargs)


def map_oov(ids: torch.Tensor, vocab_sizes: torch.Tensor) -> torch.Tensor:
    """Ids outside ``[0, vocab_size_f)`` -> 0 (the OOV row), per field.

    ``vocab_sizes`` has shape ``[fields]`` and broadcasts over the batch. Lowers to
    GreaterOrEqual/Less/And/Where in ONNX: no runtime error and no wrap-around for
    negative ids (onnxruntime silently wraps -1 to the last row of a plain Gather).
    """
    valid = (ids >= 0) & (ids < vocab_sizes)
    return torch.where(valid, ids, torch.zeros_like(ids))


class EmbeddingLayer(nn.Module, ABC):
    """Abstract embedding layer: ``[batch, fields]`` ids -> ``[batch, fields, dim]``."""

    type_name: ClassVar[str] = "abstract"

    def __init__(self, vocab_sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        vocab_sizes = [int(v) for v in vocab_sizes]
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise BadInputError(f"vocab_sizes must be a non-empty list of positive ints, got {vocab_sizes}")
        if dim < 1:
            raise BadInputError(f"embedding dim must be >= 1, got {dim}")
        self.vocab_sizes: tuple[int, ...] = tuple(vocab_sizes)
        self.dim = int(dim)
        # int64 vocabulary sizes per field, used by map_oov; part of the stored bytes.
        self.register_buffer("vocab_size_tensor", torch.tensor(vocab_sizes, dtype=torch.int64))

    # -------------------------------------------------------------- protocol
    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids``: int64 ``[batch, fields]`` -> float32 ``[batch, fields, dim]``."""
        return self.lookup(map_oov(ids, self.vocab_size_tensor))

    @abstractmethod
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up ids that are already within range (``0 <= id < vocab_size``)."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments plus ``type``; see ``embedding_from_spec``."""

    def to_deployable(self) -> EmbeddingLayer:
        """The form that is exported (a compact storage format). Default: ``self``."""
        return self

    def storage_tensors(self) -> list[torch.Tensor]:
        """Tensors the exported file holds for this layer (deployable form)."""
        layer = self.to_deployable()
        return distinct_tensors(layer.state_dict().values())

    def storage_bytes(self) -> int:
        """Exact bytes of this layer's tensors in the exported file."""
        return sum(t.numel() * t.element_size() for t in self.storage_tensors())

    def dense_weight(self) -> torch.Tensor:
        """The effective table as dense fp32 ``[sum(vocab_sizes), dim]`` (for analysis).

        Row ``offset_f + i`` is what the layer returns for id ``i`` of field ``f``.
        """
        rows = []
        for f, n in enumerate(self.vocab_sizes):
            ids = torch.zeros(n, self.num_fields, dtype=torch.int64)
            ids[:, f] = torch.arange(n)
            with torch.no_grad():
                rows.append(self.lookup(ids)[:, f, :])
        return torch.cat(rows, dim=0)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradients are row-sparse (trained with a lazy optimiser)."""
        return []

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, rows={sum(self.vocab_sizes)}, dim={self.dim}, storage_bytes={self.storage_bytes():,}"


def distinct_tensors(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Non-empty tensors, value-duplicates dropped: what the ONNX file actually stores.

    The exporter stores one initializer for tensors of equal dtype, shape and values
    (``torch.onnx`` deduplicates initializers by value) and none for unused empty ones.
    """
    out: list[torch.Tensor] = []
    for t in tensors:
        if t.numel() == 0:
            continue
        if any(u.dtype == t.dtype and u.shape == t.shape and torch.equal(u, t) for u in out):
            continue
        out.append(t)
    return out


def stored_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes the exported file holds for ``tensors``: each distinct tensor once."""
    return sum(t.numel() * t.element_size() for t in distinct_tensors(tensors))


def field_offsets(vocab_sizes: Sequence[int]) -> list[int]:
    """Start row of each field in a concatenated table."""
    offsets, acc = [], 0
    for n in vocab_sizes:
        offsets.append(acc)
        acc += int(n)
    return offsets


def swap_embedding_(model: nn.Module, fn: Callable[[str, EmbeddingLayer], EmbeddingLayer | None]) -> nn.Module:
    """Replace embedding layers in ``model`` in place (the one module-surgery walk).

    ``fn(qualified_name, layer)`` returns the replacement, or ``None`` to keep the layer.
    """
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, EmbeddingLayer):
                fqn = f"{parent_name}.{child_name}" if parent_name else child_name
                new = fn(fqn, child)
                if new is not None:
                    setattr(parent, child_name, new)
    return model
