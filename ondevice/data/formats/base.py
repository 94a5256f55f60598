"""What every raw-format loader shares: the loader protocol, chunks, and streaming readers.

A format turns one raw file into a stream of :class:`Chunk` s. A chunk holds one column
per field (a pyarrow array of raw values for ``vocab``/``hash`` fields, an int64 numpy array
of raw ids for ``identity`` fields) plus the labels, and can name the file and line of any
of its rows for error messages. The format knows nothing about vocabularies or splits:
``ondevice.data.preparation`` counts, encodes and writes.

Delimited text (Criteo, Avazu, libFM, MovieLens, generic CSV) is read by
:class:`DelimitedSource`: the file (gzip detected by its magic bytes, whatever its name) is
cut into blocks of whole lines, each block is parsed by pyarrow's multithreaded CSV parser
into string columns, and blocks are read ahead on a background thread while the previous
one is being counted or encoded. Memory is bounded by the block size, never by the file.

A block ends at a *record* end: with CSV quoting, a newline inside a ``"quoted"`` field is part
of the value, not a record end (:func:`record_ends`), so quoted newlines work at any file size.
A record longer than the block size (a 1 GiB line, or a quote that is never closed) is refused
with its line number after reading at most two blocks (:class:`DelimitedSource`).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import queue
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ondevice.errors import BadInputError, DataFormatError
from ondevice.schema import Encoding, Role, Task, log2_rule

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_BLOCK_BYTES = 8 << 20


# --------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class FieldSpec:
    """A field as a format declares it (before vocabularies are known)."""

    name: str
    encoding: Encoding = "vocab"
    role: Role = "context"
    transform: str | None = None


@dataclass
class Chunk:
    """A run of consecutive rows of one input file.

    ``columns[j]`` holds field ``j``'s raw values: a pyarrow array (any type; nulls are
    the field's *missing* value) for vocab/hash fields, an int64 numpy array for identity
    fields. ``labels`` is float32 0/1 (CTR) or None (top-K). ``locate(i)`` names the file
    and line of row ``i``.
    """

    columns: list[pa.Array | np.ndarray]
    labels: np.ndarray | None
    locate: Callable[[int], str]

    def __len__(self) -> int:
        col = self.columns[0]
        return len(col)


class RawFormat(ABC):
    """A raw input format. Subclasses set ``name``, ``task``, ``options`` and implement
    :meth:`inspect` (validate the inputs, return the fields) and :meth:`iter_chunks`."""

    name: ClassVar[str]
    task: ClassVar[Task] = "ctr"
    #: allowed keys of ``format_options`` with a one-line description each
    options: ClassVar[dict[str, str]] = {}
    #: how the label is derived, stored in ``schema.json`` ``extra.label_rule``
    label_rule: ClassVar[str] = ""

    def __init__(self, format_options: Mapping[str, Any] | None = None) -> None:
        opts = dict(format_options or {})
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise BadInputError(f"format {self.name!r} has no option {unknown[0]!r}; allowed: {allowed}")
        bb = opts.get("block_bytes")
        if bb is not None and (not isinstance(bb, int) or isinstance(bb, bool) or not 1 <= bb <= 1 << 31):
            raise BadInputError(f"--option block_bytes must be a whole number of bytes in [1, 2^31], got {bb!r}")
        self.opts = opts

    @abstractmethod
    def inspect(self, inputs: Sequence[Path]) -> list[FieldSpec]:
        """Check the inputs (headers, side files) and return the fields in order."""

    @abstractmethod
    def iter_chunks(self, path: Path, chunk_rows: int) -> Iterator[Chunk]:
        """Yield the rows of one input file as chunks of at most ``chunk_rows`` rows."""

    def default_hash_buckets(self) -> dict[str, int]:
        """Fields the format itself hashes (``{field: buckets}``); ``hash_buckets`` overrides."""
        return {}

    def schema_extra(self) -> dict[str, Any]:
        """Format notes stored in ``schema.json`` (label rule, transforms, options)."""
        return {"label_rule": self.label_rule} if self.label_rule else {}


# --------------------------------------------------------------------------- files
def check_input(path: str | Path) -> Path:
    """The path as a ``Path`` if it is a readable file, else a one-line ``BadInputError``."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"input file not found: {p}")
    if not p.is_file():
        raise BadInputError(f"input {p} is not a file")
    return p


def open_binary(path: Path) -> BinaryIO:
    """Open a file for reading, transparently decompressing gzip (detected by magic bytes)."""
    fh = open(path, "rb")  # noqa: SIM115 - returned to the caller
    magic = fh.read(2)
    fh.seek(0)
    if magic == GZIP_MAGIC:
        return _CheckedGzip(path, fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


class _CheckedGzip(gzip.GzipFile):
    """A ``GzipFile`` whose corrupt or truncated stream is a one-line ``DataFormatError`` naming the file.

    (zlib raises ``zlib.error``, a cut-off file ``EOFError`` — which click would turn into
    "Aborted!" — and a damaged header ``BadGzipFile``.)
    """

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self._path = path
        super().__init__(**kwargs)

    def _fail(self, err: Exception) -> DataFormatError:
        return DataFormatError(f"{self._path} is a corrupt or truncated gzip file ({type(err).__name__}: "
                               f"{str(err)[:100]}); download or compress it again")

    def read(self, size: int = -1) -> bytes:
        try:
            return super().read(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise self._fail(err) from None

    def read1(self, size: int = -1) -> bytes:
        try:
            return super().read1(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise self._fail(err) from None

    def readline(self, size: int | None = -1) -> bytes:
        try:
            return super().readline(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise self._fail(err) from None

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def read_first_line(path: Path, *, encoding: str = "utf-8", max_bytes: int = DEFAULT_BLOCK_BYTES) -> str | None:
    """The first non-empty line without its newline, or None for an empty file.

    A line longer than ``max_bytes`` is a ``DataFormatError`` (memory stays bounded)."""
    line_no = 0
    with open_binary(path) as fh:
        while True:
            raw = fh.readline(max_bytes + 1)
            line_no += 1
            if not raw:
                return None
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                raise line_too_long(path, line_no, max_bytes)
            line = raw.decode(encoding, errors="replace").rstrip("\r\n")
            if line.strip():
                return line


def line_too_long(path: Path, line_no: int, limit: int, *, quoted: bool = False) -> DataFormatError:
    """The one-line error for a record with no end within ``limit`` bytes."""
    why = " (or a quoted field that starts there is never closed)" if quoted else ""
    return DataFormatError(f"{path} line {line_no}: the line is longer than {limit:,} bytes{why}; a record must fit "
                           f"in one block of text: if the file really has such lines, raise --option block_bytes")


def record_ends(buf: bytes, delimiter: str, quoting: bool, *, slice_bytes: int = 1 << 20) -> np.ndarray:
    """Offsets of the ``\\n`` bytes that end a record in ``buf`` (which starts at a record start).

    Without quoting (or without a ``"`` in ``buf``) that is every newline. With quoting it follows
    the pyarrow CSV lexer: a quote opens a quoted field only at the start of a field (after the
    delimiter, a line end or ``buf``'s start), ``""`` inside it is an escaped quote, the next single
    quote closes it, and a quote anywhere else is a literal character. Fast path: when every quote
    is *structural* (an opening quote at a field start, a closing one before a delimiter/line end,
    or half of a ``""`` pair), a newline is inside a quoted field exactly when an odd number of
    quotes precede it (vectorised, ``slice_bytes`` at a time so the temporaries stay small).
    Otherwise the quotes are walked one by one (:func:`_quoted_spans`).
    """
    b = np.frombuffer(buf, dtype=np.uint8)
    if not quoting or buf.find(b'"') < 0:
        return np.flatnonzero(b == 10)
    special = np.zeros(256, dtype=bool)  # bytes that may border a structural quote
    special[[ord(delimiter), 10, 13, 34]] = True
    out: list[np.ndarray] = []
    seen = 0  # quotes before the current slice
    for lo in range(0, b.size, slice_bytes):
        part = b[lo:lo + slice_bytes]
        quotes = np.flatnonzero(part == 34) + lo
        opening, closing = quotes[seen % 2::2], quotes[1 - seen % 2::2]
        before = np.where(opening > 0, b[np.maximum(opening - 1, 0)], 10)  # buf's ends act as line ends
        after = np.where(closing + 1 < b.size, b[np.minimum(closing + 1, b.size - 1)], 10)
        if not (special[before].all() and special[after].all()):
            return _record_ends_walked(buf, ord(delimiter))
        newlines = np.flatnonzero(part == 10) + lo
        out.append(newlines[(np.searchsorted(quotes, newlines) + seen) % 2 == 0])
        seen += quotes.size
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _record_ends_walked(buf: bytes, delimiter: int) -> np.ndarray:
    """:func:`record_ends` for buffers with literal quotes: walk the quoted fields one by one."""
    newlines = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
    starts, ends = _quoted_spans(buf, delimiter)
    if not starts.size:
        return newlines
    k = np.searchsorted(starts, newlines) - 1
    inside = (k >= 0) & (newlines < ends[np.maximum(k, 0)])
    return newlines[~inside]


def _quoted_spans(buf: bytes, delimiter: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` offsets of the quoted fields in ``buf`` (pyarrow's lexer rules; see
    :func:`record_ends`); a field still open at the end of ``buf`` ends at ``len(buf)``."""
    starts: list[int] = []
    ends: list[int] = []
    pos, n = 0, len(buf)
    while True:
        q = buf.find(b'"', pos)
        if q < 0:
            break
        if q and buf[q - 1] not in (delimiter, 10, 13):
            pos = q + 1  # a literal quote inside an unquoted field
            continue
        j = q + 1
        while True:
            c = buf.find(b'"', j)
            if c < 0 or c + 1 >= n:
                c = n  # open to the end of what we have
                break
            if buf[c + 1] == 34:
                j = c + 2  # "" inside a quoted field
                continue
            break
        starts.append(q)
        ends.append(c)
        pos = c + 1
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def prefetch(it: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Run ``it`` on a background thread, ``depth`` items ahead (I/O and parsing overlap compute).

    Exceptions are re-raised in the consumer; closing the consumer stops the producer.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(("error", err))

    thread = threading.Thread(target=produce, name="ondevice-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- delimited text
@dataclass
class Block:
    """Whole lines of a delimited file parsed into a table of string columns."""

    path: Path
    table: pa.Table
    raw: bytes
    first_line: int  # physical line number (1-based) of raw's first line
    first_row: int  # data-row index (0-based, whole file) of the table's first row
    source: DelimitedSource

    def line_of(self, row: int) -> int:
        """Physical line number where table row ``row`` starts (empty lines are skipped by the parser)."""
        seen = -1
        for line, record in self.source.records(self.raw, self.first_line):
            if record.strip(b"\r"):
                seen += 1
                if seen == row:
                    return line
        return self.first_line

    def locate(self, row: int) -> str:
        return f"{self.path} line {self.line_of(row)}"

    def column(self, name: str) -> pa.ChunkedArray:
        """A column as parsed (a ChunkedArray; compute kernels take it without a copy)."""
        return self.table.column(name)

    def slices(self, chunk_rows: int) -> Iterator[Block]:
        """The block cut into sub-blocks of at most ``chunk_rows`` rows (same raw text)."""
        n = self.table.num_rows
        if n <= chunk_rows:
            yield self
            return
        for start in range(0, n, chunk_rows):
            yield _SubBlock(self, start, self.table.slice(start, chunk_rows))


class _SubBlock(Block):
    def __init__(self, parent: Block, start: int, table: pa.Table) -> None:
        super().__init__(parent.path, table, parent.raw, parent.first_line, parent.first_row + start, parent.source)
        self._parent, self._start = parent, start

    def line_of(self, row: int) -> int:
        return self._parent.line_of(self._start + row)


class DelimitedSource:
    """Stream a delimited text file as :class:`Block` s of string columns.

    Parameters
    ----------
    names : column names, in file order (the header is checked against them when
        ``header=True``; pass ``None`` to take them from the header).
    delimiter : one character for the parser. ``logical_delimiter`` is what a human sees
        (``::`` for MovieLens, parsed as ``:`` with every other column empty) and is used to
        count fields in error messages; ``expected_fields`` is that count.
    quoting : honour ``"..."`` quoting (CSV); off for TSV/libFM/Criteo (faster, literal quotes).
    """

    def __init__(
        self,
        path: Path,
        *,
        names: Sequence[str] | None,
        delimiter: str,
        header: bool = False,
        quoting: bool = False,
        logical_delimiter: str | None = None,
        expected_fields: int | None = None,
        include: Sequence[str] | None = None,
        column_types: Mapping[str, pa.DataType] | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        encoding: str = "utf-8",
    ) -> None:
        self.path = check_input(path)
        self.delimiter = delimiter
        self.logical = logical_delimiter or delimiter
        self.quoting = quoting
        self.header = header
        self.encoding = encoding
        self.block_bytes = max(int(block_bytes), 1 << 16)
        header_names = self.header_names() if header else None
        if names is None:
            if header_names is None:
                raise DataFormatError(f"{self.path} is empty (no header line)")
            names = header_names
        self.names = list(names)
        self.expected = expected_fields if expected_fields is not None else len(self.names)
        self.include = list(include) if include is not None else None
        self.column_types = dict(column_types or {})

    def header_names(self) -> list[str] | None:
        line = read_first_line(self.path, encoding=self.encoding)
        if line is None:
            return None
        if self.quoting:
            import csv

            return next(csv.reader([line], delimiter=self.delimiter))
        return line.split(self.delimiter)

    # ------------------------------------------------------------------ field counting
    def count_fields(self, line: str) -> int:
        """Fields of one record (with quoting, a record may hold quoted newlines)."""
        if self.quoting:
            import csv

            try:
                return len(next(csv.reader(io.StringIO(line, newline=""), delimiter=self.delimiter), []))
            except csv.Error:
                return -1
        return len(line.split(self.logical))

    def records(self, raw: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
        """``(physical line number, bytes)`` of each record of ``raw`` (whole records, no newline)."""
        ends = record_ends(raw, self.delimiter, self.quoting)
        start, line = 0, first_line
        for end in [*ends.tolist(), len(raw)]:
            if end < start:
                continue
            record = raw[start:end]
            yield line, record
            line += record.count(b"\n") + 1
            start = end + 1

    def _bad_line(self, raw: bytes, first_line: int) -> DataFormatError:
        for line_no, record in self.records(raw, first_line):
            text = record.rstrip(b"\r").decode(self.encoding, errors="replace")
            if not text.strip():
                continue
            n = self.count_fields(text)
            if n != self.expected:
                hint = ""
                for other in (",", "\t", ";", "|"):
                    if other != self.delimiter and len(text.split(other)) == self.expected:
                        hint = (f"; it looks {'tab' if other == chr(9) else repr(other)}-separated, not "
                                f"{'tab' if self.delimiter == chr(9) else repr(self.delimiter)}-separated: "
                                "use --format csv with a --spec file")
                        break
                return DataFormatError(f"{self.path} line {line_no}: {n} fields, expected {self.expected}{hint}")
        return DataFormatError(f"{self.path} near line {first_line}: a row has the wrong number of fields (expected {self.expected})")

    # ------------------------------------------------------------------ reading
    def _raw_blocks(self) -> Iterator[tuple[bytes, int]]:
        """Whole-line byte blocks with the physical line number of their first line."""
        line_no = 1
        limit = self.block_bytes
        with open_binary(self.path) as fh:
            if self.header:
                while True:  # the header, after any leading empty lines
                    head = fh.readline(limit + 1)
                    if len(head) > limit and not head.endswith(b"\n"):
                        raise line_too_long(self.path, line_no, limit)
                    line_no += 1
                    if not head or head.strip():
                        break
            rest = b""
            while True:
                data = fh.read(self.block_bytes)
                if not data:
                    if rest.strip():
                        yield rest, line_no
                    return
                buf = rest + data
                if self.quoting and buf.find(b'"') >= 0:
                    ends = record_ends(buf, self.delimiter, True)
                    first, cut = (int(ends[0]), int(ends[-1])) if ends.size else (len(buf), -1)
                else:
                    cut = buf.rfind(b"\n")
                    first = buf.find(b"\n") if cut >= 0 else len(buf)
                if first > limit:  # the record starting at line_no (the only one that can span reads) is too long
                    raise line_too_long(self.path, line_no, limit, quoted=self.quoting and buf.find(b'"') >= 0)
                if cut < 0:
                    rest = buf
                    continue
                block, rest = buf[: cut + 1], buf[cut + 1 :]
                yield block, line_no
                line_no += block.count(b"\n")

    def _parse(self, raw: bytes, first_line: int, *, typed: bool = True) -> pa.Table:
        """Parse whole lines. Columns are strings, except ``column_types`` (numbers parsed by
        pyarrow directly, much cheaper than strings + cast). If a typed column does not
        convert, the block is parsed again as strings so the format's own check can name
        the line of the bad value."""
        bad: list[int] = []

        def on_invalid(row: Any) -> str:
            bad.append(1)
            return "skip"

        read_opts = pacsv.ReadOptions(column_names=self.names, use_threads=True, block_size=1 << 20)
        parse_opts = pacsv.ParseOptions(
            delimiter=self.delimiter,
            quote_char='"' if self.quoting else False,
            double_quote=self.quoting,
            ignore_empty_lines=True,
            newlines_in_values=self.quoting and raw.find(b'"') >= 0,  # else pyarrow's own 1 MiB chunks go out of sync
            invalid_row_handler=on_invalid,
        )
        convert_opts = pacsv.ConvertOptions(
            column_types={**{n: pa.string() for n in self.names}, **(self.column_types if typed else {})},
            strings_can_be_null=False,
            include_columns=self.include,
            check_utf8=False,  # 2x faster parsing; the vocabularies are checked once at the end
        )
        try:
            table = pacsv.read_csv(io.BytesIO(raw), read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)
        except pa.ArrowInvalid as err:
            if typed and self.column_types and "conversion error" in str(err):
                return self._parse(raw, first_line, typed=False)
            if "UTF8" in str(err) or "utf8" in str(err).lower():
                raise DataFormatError(f"{self.path} near line {first_line}: text is not UTF-8; re-encode the file to UTF-8") from None
            raise DataFormatError(f"{self.path} near line {first_line}: {str(err).splitlines()[0]}") from None
        if bad:
            raise self._bad_line(raw, first_line)
        return table

    def blocks(self, chunk_rows: int) -> Iterator[Block]:
        """Parsed blocks of at most ``chunk_rows`` rows, read one block ahead in a thread."""
        def parsed() -> Iterator[Block]:
            row = 0
            for raw, first_line in self._raw_blocks():
                table = self._parse(raw, first_line)
                block = Block(self.path, table, raw, first_line, row, self)
                row += table.num_rows
                yield block

        for block in prefetch(parsed()):
            yield from block.slices(chunk_rows)


# --------------------------------------------------------------------------- converters
def to_numpy(x: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Array or ChunkedArray -> numpy (nulls become NaN for numbers)."""
    if isinstance(x, pa.ChunkedArray):
        if x.num_chunks == 0:
            return np.zeros(0, dtype=x.type.to_pandas_dtype())
        return np.concatenate([c.to_numpy(zero_copy_only=False) for c in x.chunks])
    return x.to_numpy(zero_copy_only=False)


def dictionary_encode(x: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """``(distinct values, index of each row's value)``; null is a value of its own."""
    enc = x.dictionary_encode(null_encoding="encode")
    if isinstance(enc, pa.ChunkedArray):
        if enc.num_chunks == 0:
            return pa.array([], type=x.type), np.zeros(0, dtype=np.int32)
        # pyarrow gives every chunk the same (unified) dictionary
        return enc.chunk(enc.num_chunks - 1).dictionary, np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in enc.chunks])
    return enc.dictionary, enc.indices.to_numpy(zero_copy_only=False)


def _first_bad(values: Sequence[Any], ok: Callable[[Any], bool]) -> int:
    for i, v in enumerate(values):
        if not ok(v):
            return i
    return 0


def _is_float(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def to_float(col: pa.Array | pa.ChunkedArray, block: Block, what: str) -> pa.Array | pa.ChunkedArray:
    """String column -> float64 (empty strings -> null); a non-number names its line.

    A number must be **finite**: ``inf``, ``-inf`` and values beyond float64 (``1e999``) are a
    ``DataFormatError`` naming the file and line, like any other text that is not a number
    (issue 15: they all used to become the same token). The usual spellings of a missing
    value (``""``, ``NA``, ``NULL``, ``nan``, ``N/A``: pyarrow's CSV null values) are missing.
    """
    if pa.types.is_floating(col.type):
        x = col
    else:
        empty = pc.equal(col, "")
        masked = pc.if_else(empty, pa.scalar(None, pa.string()), col)
        try:
            x = pc.cast(masked, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = masked.to_pylist()
            i = _first_bad(values, lambda v: v is None or _is_float(v))
            raise DataFormatError(f"{block.locate(i)}: {what} {values[i]!r} is not a number") from None
    infinite = pc.is_inf(x)
    if pc.any(infinite).as_py():
        i = int(np.flatnonzero(to_numpy(pc.fill_null(infinite, False)))[0])
        raise DataFormatError(f"{block.locate(i)}: {what} is {to_numpy(x)[i]} (written as inf or a number beyond "
                              "±1.8e308 such as 1e999), not a finite number; fix or remove the line")
    return x


def labels_from(col: pa.Array, block: Block, what: str = "label", threshold: float = 0.0) -> np.ndarray:
    """Labels as float32 0/1: a value ``> threshold`` is positive (0/1 and 1/-1 labels alike).

    An empty or non-numeric label is a ``DataFormatError`` naming the file and line.
    """
    x = to_float(col, block, what)
    if x.null_count:
        i = int(np.flatnonzero(to_numpy(pc.is_null(x)))[0])
        raise DataFormatError(f"{block.locate(i)}: {what} is empty")
    return (to_numpy(x) > threshold).astype(np.float32)


#: The integer tokens a numeric rule may produce: int64, so ``x`` outside [-2^63, 2^63) has none.
INT64_LIMIT = float(2**63)


def map_distinct(x: pa.Array | pa.ChunkedArray, fn: Callable[[np.ndarray], np.ndarray],
                 block: Block | None = None, what: str = "value") -> pa.Array:
    """Apply a numeric ``fn`` to the *distinct* values of ``x`` only, then gather.

    Integer-like columns have few distinct values (a Criteo I-column has at most a few
    thousand per chunk), so hashing once and transforming the dictionary is several times
    cheaper than transforming every row. ``fn`` maps float64 (NaN = missing) to whole
    numbers; missing stays null. A result that is not finite or does not fit int64
    (``-9.3e18`` kept as itself) is a ``DataFormatError`` naming ``block``'s line: casting it
    would give every such value the same token.
    """
    values, indices = dictionary_encode(x)
    v = to_numpy(values).astype(np.float64)
    missing = np.isnan(v)
    with np.errstate(invalid="ignore", over="ignore"):
        f = np.asarray(fn(np.where(missing, 0.0, v)), dtype=np.float64)
    bad = ~missing & ~(np.isfinite(f) & (f >= -INT64_LIMIT) & (f < INT64_LIMIT))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        where = block.locate(int(np.flatnonzero(indices == k)[0])) if block is not None else "input"
        raise DataFormatError(f"{where}: {what} {v[k]:.6g} has no integer token (outside the 64-bit integer range "
                              f"±9.2e18, or not finite); an integer field holds counts: fix or remove the line")
    out = np.where(missing, 0.0, f).astype(np.int64)
    return pa.array(out, mask=missing).take(pa.array(indices))


def criteo_log2(x: pa.Array | pa.ChunkedArray, block: Block | None = None, what: str = "value") -> pa.Array:
    """Criteo integer bucketing: ``x > 2 -> floor(ln(x)^2)``, else ``x`` itself; missing stays null.

    This is the discretisation of the Kaggle Criteo winners' solution as used in the PEP
    (Liu et al., ICLR 2021, ``ssui-liu/learnable-embed-sizes-for-RecSys`` ``criteo.py``:
    ``if val > 2: val = int(math.log(float(val)) ** 2)``) and DeepLight (Deng et al.,
    WSDM 2021) preprocessing code. Takes float64 with nulls, returns int64 with nulls; a value
    without an int64 token (``x < -2^63``, not finite) names ``block``'s line (:func:`map_distinct`).
    """
    return map_distinct(x, log2_rule, block, what)


def int_tokens(x: pa.Array | pa.ChunkedArray, block: Block | None = None, what: str = "value") -> pa.Array:
    """float64 with nulls -> int64 with nulls (``floor``); out-of-range values as in :func:`map_distinct`."""
    return map_distinct(x, np.floor, block, what)
