"""Raw-format loaders, one module per format, and the registry ``prepare --format`` uses.

====================  ======================================================  =======
name                  input                                                   task
====================  ======================================================  =======
``criteo``            Kaggle DAC TSV: label, I1..I13, C1..C26 (no header)     ctr
``avazu``             Avazu CSV with header (``id,click,hour,...``)           ctr
``libfm``             ``label idx:val ...`` (fixed features per line)         ctr
``movielens``         ML-1M ``ratings.dat`` + ``users.dat`` + ``movies.dat``  ctr
``implicit``          ``user item item ...`` lines (LightGCN) or ``user item``  topk
``csv``               any CSV/TSV described by a small JSON/TOML spec file    ctr/topk
====================  ======================================================  =======

Every format accepts gzip input (detected by content, whatever the file name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ondevice.data.formats.avazu import AvazuFormat
from ondevice.data.formats.base import Chunk, FieldSpec, RawFormat
from ondevice.data.formats.criteo import CriteoFormat
from ondevice.data.formats.generic_csv import CsvFormat
from ondevice.data.formats.implicit import ImplicitFormat
from ondevice.data.formats.libfm import LibFMFormat
from ondevice.data.formats.movielens import MovieLensFormat
from ondevice.errors import BadInputError

FORMATS: dict[str, type[RawFormat]] = {}


def register_format(cls: type[RawFormat]) -> type[RawFormat]:
    """Add a format class to the registry under ``cls.name``."""
    FORMATS[cls.name] = cls
    return cls


for _cls in (CriteoFormat, AvazuFormat, LibFMFormat, MovieLensFormat, ImplicitFormat, CsvFormat):
    register_format(_cls)


def get_format(name: str, options: Mapping[str, Any] | None = None) -> RawFormat:
    """An instance of the named format with its options checked."""
    cls = FORMATS.get(name)
    if cls is None:
        raise BadInputError(f"unknown format {name!r}; expected one of {', '.join(sorted(FORMATS))}")
    return cls(options)


__all__ = ["FORMATS", "Chunk", "FieldSpec", "RawFormat", "get_format", "register_format"]
