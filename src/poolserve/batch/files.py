"""Reading a file job's input in windows and writing its shards and final output.

Promises:

* Input is streamed: at most one window of rows (plus one Parquet batch) is held,
  whatever the file's size. Rows are numbered 0, 1, ... over data rows only: the CSV
  header and the empty lines of ``.txt``/``.jsonl`` files are not rows.
* Window ``k`` holds rows ``[k * window, (k + 1) * window)``: the same input and
  window size always give the same windows. Windows listed as done are read past
  without parsing (Parquet: whole row groups before the first needed row are skipped).
* A row that lacks a field, or is not JSON, becomes a :class:`~.window.Missing` cell
  (a bad row for the worker), never an exception; a file that lacks a field in its
  header or schema (CSV, Parquet) is refused up front with :class:`InputError`.
* Shards and merged outputs are written by the caller into temporary paths; merging
  streams shard by shard, so memory stays at one shard.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import shutil
import sys
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from .window import Missing, WindowResult

INPUT_FORMATS = ("txt", "jsonl", "csv", "parquet")
OUTPUT_FORMATS = ("parquet", "jsonl", "npy")
_SUFFIXES = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_SUFFIXES |= {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npy": "npy"}
VALUE_COLUMN = {"embed": "embedding", "classify": "probs", "score": "score"}


class InputError(Exception):
    """The input cannot be read as asked (unknown format, a field no row can have)."""


def detect_format(path: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    """The format named by ``path``'s suffix, or ``default`` (stdin/stdout, unknown)."""
    fmt = _SUFFIXES.get(Path(path).suffix.lower(), default) if path != "-" else default
    if fmt not in allowed:
        raise InputError(
            f"cannot tell the format of {path!r} from its suffix; "
            f"name it .{'/.'.join(allowed)} or pass the format flag"
        )
    need_pyarrow(fmt)
    return fmt


def need_pyarrow(fmt: str) -> None:
    """InputError naming the extra to install when ``fmt`` is Parquet and pyarrow (not
    in the core install) is missing."""
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise InputError("Parquet files need pyarrow: pip install 'poolserve[files]'")


def count_rows(path: str, fmt: str) -> int | None:
    """The number of rows, when cheap to know (Parquet metadata, a line scan); else None."""
    if path == "-":
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if fmt in ("txt", "jsonl"):
        with open(path, "rb") as f:
            return sum(1 for line in f if is_row(line, fmt))
    return None


def is_row(line: bytes, fmt: str) -> bool:
    """Whether a line of a .txt / .jsonl file is a row: .txt skips empty lines (as the
    first ``poolserve embed`` did), .jsonl blank ones (JSON allows no empty value)."""
    return bool(line.strip()) if fmt == "jsonl" else line not in (b"\n", b"\r\n")


@dataclass
class WindowReader:
    """Rows of ``path`` as :class:`~.window.Window` s; ``fields`` maps column -> source field.

    ``fields`` keys are the window columns (``text`` or ``text_1``/``text_2``, and
    ``id``); after :meth:`windows` is exhausted, ``rows`` and ``count`` hold the totals.
    """

    path: str
    fmt: str
    fields: dict[str, str]
    window: int
    rows: int | None = None
    count: int | None = None
    _stdin: BinaryIO = field(default_factory=lambda: sys.stdin.buffer, repr=False)

    def windows(self, done: Container[int] = ()) -> Iterator[Any]:
        from .window import Window

        blocks = self._parquet_blocks(done) if self.fmt == "parquet" else self._line_blocks(done)
        rows = count = 0
        for index, n, columns in blocks:
            rows, count = index * self.window + n, index + 1
            if columns is not None:
                yield Window(index, index * self.window, columns)
        self.rows, self.count = rows, count

    # -- line formats: txt, jsonl, csv ----------------------------------------------

    def _open(self) -> BinaryIO:
        return self._stdin if self.path == "-" else open(self.path, "rb")

    def _line_blocks(
        self, done: Container[int]
    ) -> Iterator[tuple[int, int, dict[str, list[Any]] | None]]:
        with self._open() as raw:
            records: Iterator[Any]
            if self.fmt == "csv":
                records, parse = self._csv(raw)
            else:
                records = (line for line in raw if is_row(line, self.fmt))
                parse = self._parse_txt if self.fmt == "txt" else self._parse_jsonl
            index = 0
            while block := list(islice(records, self.window)):
                # A done window is read past (the rows must be counted) but not parsed.
                yield index, len(block), (None if index in done else parse(block))
                index += 1

    def _parse_txt(self, lines: list[Any]) -> dict[str, list[Any]]:
        if set(self.fields) - {"text"}:
            raise InputError(".txt input has one text per line and no other fields")
        return {"text": [b.decode("utf-8", "replace").rstrip("\r\n") for b in lines]}

    def _parse_jsonl(self, lines: list[Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {c: [] for c in self.fields}
        for line in lines:
            try:
                obj = orjson.loads(line)
                reason = "" if isinstance(obj, dict) else "row is not a JSON object"
            except orjson.JSONDecodeError as exc:
                obj, reason = None, f"row is not valid JSON: {exc}"
            for col, name in self.fields.items():
                if reason:
                    out[col].append(Missing(name, reason))
                else:
                    out[col].append(obj[name] if name in obj else Missing(name))
        return out

    def _csv(
        self, raw: BinaryIO
    ) -> tuple[Iterator[list[str]], Callable[[list[Any]], dict[str, list[Any]]]]:
        csv.field_size_limit(2**31 - 1)  # texts may be long; the default is 128 KiB
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.reader(text)
        header = next(reader, [])
        missing = [name for name in self.fields.values() if name not in header]
        if missing:
            raise InputError(
                f"{self.path}: no column {', '.join(map(repr, missing))} "
                f"(the header has: {', '.join(header) or 'nothing'})"
            )
        where = {col: header.index(name) for col, name in self.fields.items()}

        def parse(block: list[Any]) -> dict[str, list[Any]]:
            return {
                col: [r[i] if i < len(r) else Missing(self.fields[col]) for r in block]
                for col, i in where.items()
            }

        return reader, parse

    # -- parquet ---------------------------------------------------------------------

    def _parquet_blocks(
        self, done: Container[int]
    ) -> Iterator[tuple[int, int, dict[str, list[Any]] | None]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        names = pf.schema_arrow.names
        missing = [name for name in self.fields.values() if name not in names]
        if missing:
            raise InputError(
                f"{self.path}: no column {', '.join(map(repr, missing))} "
                f"(the file has: {', '.join(names)})"
            )
        meta, total = pf.metadata, pf.metadata.num_rows
        count = (total + self.window - 1) // self.window
        first = next((k for k in range(count) if k not in done), count)
        # Skip whole row groups that end before the first window still to compute.
        group, skipped = 0, 0
        while group < meta.num_row_groups and skipped + meta.row_group(group).num_rows <= (
            first * self.window
        ):
            skipped += meta.row_group(group).num_rows
            group += 1
        for index in range(first):
            yield index, min(self.window, total - index * self.window), None
        columns = list(dict.fromkeys(self.fields.values()))
        batches = pf.iter_batches(
            batch_size=min(self.window, 65536),
            row_groups=list(range(group, meta.num_row_groups)),
            columns=columns,
            use_threads=False,
        )
        pending: list[Any] = []
        have, drop = 0, first * self.window - skipped  # rows to drop before window `first`
        index = first
        for batch in batches:
            if drop:
                cut = min(drop, batch.num_rows)
                batch, drop = batch.slice(cut), drop - cut
            pending.append(batch)
            have += batch.num_rows
            while index < count and have >= (n := min(self.window, total - index * self.window)):
                table = pa.Table.from_batches(pending).combine_chunks()
                head, rest = table.slice(0, n), table.slice(n)
                pending, have = rest.to_batches(), have - n
                yield index, n, (None if index in done else self._columns(head))
                index += 1

    def _columns(self, table: Any) -> dict[str, list[Any]]:
        return {col: table.column(name).to_pylist() for col, name in self.fields.items()}


# -- shards and merged outputs -------------------------------------------------------


def _value_arrays(
    result: WindowResult, task: str, labels: list[str | None] | None
) -> dict[str, Any]:
    """The Arrow columns of a result (error rows null), in output order."""
    import pyarrow as pa

    n = len(result.values)
    bad = np.zeros(n, dtype=bool)
    for row in result.errors:
        bad[row - result.start] = True
    cols: dict[str, Any] = {}
    if result.ids is not None:
        cols["id"] = _id_array(result.ids)
    values = np.ascontiguousarray(result.values, dtype=np.float32)
    if task == "score":
        cols["score"] = pa.array(values, mask=bad)
    else:
        width = values.shape[1] if values.ndim == 2 else 0
        flat = pa.array(values.reshape(-1))
        lists = pa.FixedSizeListArray.from_arrays(flat, width, mask=pa.array(bad))
        cols[VALUE_COLUMN[task]] = lists
        if task == "classify":
            best = values.argmax(axis=1) if width and n else np.zeros(n, dtype=np.int64)
            names = [None if b else _label(labels, int(k)) for k, b in zip(best, bad, strict=True)]
            cols["label"] = pa.array(names, type=pa.string())
    errors = [result.errors.get(result.start + i) for i in range(n)]
    cols["error"] = pa.array(errors, type=pa.string())
    return cols


def _label(labels: list[str | None] | None, k: int) -> str | None:
    return labels[k] if labels is not None and k < len(labels) else None


def _id_array(ids: list[Any]) -> Any:
    import pyarrow as pa

    clean = [None if isinstance(v, Missing) else v for v in ids]
    try:
        return pa.array(clean)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed kinds (1 and "a") have no common Arrow type: keep them as text.
        return pa.array([None if v is None else str(v) for v in clean], type=pa.string())


def write_shard(path: Path, fmt: str, result: WindowResult, task: str, labels: Any) -> None:
    """Write one window's result to ``path`` (a temporary name; the caller renames it)."""
    if fmt == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ascontiguousarray(result.values, dtype=np.float32))
            f.flush()
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(_value_arrays(result, task, labels)), path)
    else:
        with open(path, "wb") as f:
            f.writelines(jsonl_rows(result, task, labels))


def jsonl_rows(result: WindowResult, task: str, labels: list[str | None] | None) -> Iterator[bytes]:
    """One JSON line per row: index, id (when given), the value(s), error."""
    key = VALUE_COLUMN[task]
    for i, values in enumerate(result.values):
        row = result.start + i
        error = result.errors.get(row)
        obj: dict[str, Any] = {"index": row}
        if result.ids is not None:
            v = result.ids[i]
            obj["id"] = None if isinstance(v, Missing) else v
        obj[key] = None if error is not None else (float(values) if task == "score" else values)
        if task == "classify":
            obj["label"] = None if error is not None else _label(labels, int(np.argmax(values)))
        obj["error"] = error
        yield orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=str) + b"\n"


def error_rows(result: WindowResult) -> Iterator[bytes]:
    """The errors report lines of a result: ``{"row", "id", "error"}``."""
    for row, message in result.errors.items():
        ident = result.ids[row - result.start] if result.ids is not None else None
        obj = {"row": row, "id": None if isinstance(ident, Missing) else ident, "error": message}
        yield orjson.dumps(obj, default=str) + b"\n"


def shard_rows(path: Path, fmt: str) -> int:
    """Rows in a finished shard, read from its header or metadata only."""
    if fmt == "npy":
        return npy_header(path)[0][0]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def npy_header(path: Path) -> tuple[tuple[int, ...], int]:
    """An ``.npy`` file's shape and the offset where its data starts."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, _ = read(f)
        return tuple(int(d) for d in shape), f.tell()


def merge(shards: list[Path], fmt: str, out: BinaryIO | str, row_shape: tuple[int, ...]) -> None:
    """Concatenate ``shards`` (in order) into ``out``, one shard in memory at a time.

    ``row_shape`` is a row's shape for an ``.npy`` with no rows at all.
    """
    if fmt == "jsonl":
        with open(out, "wb") if isinstance(out, str) else out as dst:
            for shard in shards:
                with open(shard, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
    elif fmt == "npy":
        _merge_npy(shards, out, row_shape)
    else:
        _merge_parquet(shards, out)


def _merge_npy(shards: list[Path], out: BinaryIO | str, row_shape: tuple[int, ...]) -> None:
    headers = [npy_header(shard) for shard in shards]
    if headers:
        row_shape = headers[0][0][1:]
    total = sum(shape[0] for shape, _ in headers)
    header = {"descr": "<f4", "fortran_order": False, "shape": (total, *row_shape)}
    with open(out, "wb") if isinstance(out, str) else out as dst:
        np.lib.format.write_array_header_1_0(dst, header)
        for shard, (_, offset) in zip(shards, headers, strict=True):
            with open(shard, "rb") as src:
                src.seek(offset)
                shutil.copyfileobj(src, dst, 1 << 20)


def _merge_parquet(shards: list[Path], out: BinaryIO | str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(s) for s in shards]
    if not schemas:
        pq.write_table(pa.table({"error": pa.array([], type=pa.string())}), out)
        return
    schema = schemas[0]
    if "id" in schema.names:
        schema = schema.set(schema.get_field_index("id"), pa.field("id", _id_type(schemas)))
    with pq.ParquetWriter(out, schema) as writer:
        for shard in shards:
            table = pq.read_table(shard)
            if "id" in schema.names:
                table = table.set_column(
                    table.schema.get_field_index("id"),
                    "id",
                    table["id"].cast(schema.field("id").type),
                )
            writer.write_table(table)


def _id_type(schemas: list[Any]) -> Any:
    """One id type for all shards: theirs when they agree (nulls aside), else text."""
    import pyarrow as pa

    kinds = {s.field("id").type for s in schemas} - {pa.null()}
    if len(kinds) == 1:
        return kinds.pop()
    if kinds and all(pa.types.is_integer(k) or pa.types.is_floating(k) for k in kinds):
        return pa.float64()
    return pa.string() if kinds else pa.null()
