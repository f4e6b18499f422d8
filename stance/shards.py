"""Deterministic shards of table files, for engines that score in parallel (`stance score --engine ray`).

A shard is a range of one input whose bounds depend on the file alone: bytes from one record boundary to
another for CSV/TSV/JSONL (a newline outside CSV quotes), rows for Parquet, the whole file when gzipped
(no seeking) or in an encoding where newlines cannot be found in the raw bytes. The same file always gives
the same shards, so a shard's output can be named after it and written exactly once. Rows are parsed
as the local path parses them: CSV cells as strings, JSON lines as objects keeping the first record's keys.
"""
from __future__ import annotations

import glob
import gzip
import json
import mmap
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import StanceError
from .io import TableReader, detect_format
from .labels import score_columns


def expand_inputs(inputs: Sequence[str], input_format: Optional[str] = None) -> List[str]:
    """Files, folders (their table files, sorted) and glob patterns, in the order given."""
    files: List[str] = []
    for item in inputs:
        if item == "-":
            raise StanceError("--engine ray reads files, not stdin", hint="write the rows to a file first")
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).iterdir()
                           if p.is_file() and not p.name.startswith((".", "_")) and _is_table(p.name, input_format))
            if not found:
                raise StanceError("no CSV, TSV, JSONL or Parquet files in this folder", path=item)
        elif any(c in item for c in "*?["):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise StanceError("no file matches this pattern", path=item)
        else:
            found = [item]          # TableReader says so if it is missing
        files += found
    return files


def _is_table(name: str, explicit: Optional[str]) -> bool:
    try:
        return bool(detect_format(name, explicit))
    except StanceError:
        return False


class _RecordEnds:
    """Offsets just after the record holding a given byte: the next newline outside CSV quotes.

    Quotes inside a CSV field are doubled, so a newline ends a record exactly when the quotes before it
    are even in number; offsets must be asked in increasing order (the parity is carried along)."""

    def __init__(self, buf, quoted: bool):
        self.buf, self.quoted, self.pos, self.odd = buf, quoted, 0, False

    def after(self, target: int) -> int:
        target = max(target, self.pos)
        if self.quoted:
            self.odd ^= bool(self.buf[self.pos:target].count(b'"') & 1)
        while True:
            nl = self.buf.find(b"\n", target)
            if nl < 0:
                self.pos = len(self.buf)
                return self.pos
            if self.quoted:
                self.odd ^= bool(self.buf[target:nl].count(b'"') & 1)
            target = nl + 1
            if not self.odd:
                self.pos = target
                return target


def _ascii_safe(encoding: str) -> bool:
    """Can newlines and quotes be found in the raw bytes (not in UTF-16 and the like)?"""
    try:
        return "\n\"".encode(encoding) == b'\n"'
    except LookupError:
        raise StanceError(f"unknown encoding '{encoding}'") from None


def _file_ranges(path: str, fmt: str, rows: int, encoding: str) -> List[List[int]]:
    if fmt == "parquet":
        import pyarrow.parquet as pq
        n = pq.ParquetFile(path).metadata.num_rows
        return [[a, min(a + rows, n)] for a in range(0, n, rows)] or [[0, 0]]
    size = os.path.getsize(path)
    if path.lower().endswith(".gz") or not _ascii_safe(encoding) or size == 0:
        return [[0, -1]]            # no seeking into gzip: the whole file is one shard
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        ends = _RecordEnds(buf, quoted=fmt in ("csv", "tsv"))
        begin = ends.after(0) if ends.quoted else 0          # past the header record
        sample = buf[begin:begin + (1 << 20)]
        step = max(1, rows * len(sample) // max(sample.count(b"\n"), 1))   # bytes for `rows` rows, roughly
        cuts = [begin]
        while cuts[-1] + step < size:
            cut = ends.after(cuts[-1] + step)
            if cut >= size:
                break
            cuts.append(cut)
    return [[a, b] for a, b in zip(cuts, cuts[1:] + [size])]


def plan_shards(paths: Sequence[str], formats: Sequence[str], rows: int, encoding: str) -> List[Dict]:
    shards = []
    for f, (path, fmt) in enumerate(zip(paths, formats)):
        for start, stop in _file_ranges(path, fmt, rows, encoding):
            shards.append({"shard": len(shards), "file": f, "start": start, "stop": stop})
    return shards


def input_schema(readers: List[TableReader]):
    """Column types of the parts: strings for CSV (as read locally), the file's own for Parquet, those of
    the first rows for JSONL; all-null columns become strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    first = readers[0]
    if first.format in ("csv", "tsv"):
        return pa.schema([(c, pa.string()) for c in first.columns])
    if first.format == "parquet":
        schema = pq.read_schema(first.path)
    else:
        rows = [r.values for _, r in zip(range(1000), first.rows())]
        schema = pa.Table.from_pylist([{c: v.get(c) for c in first.columns} for v in rows]).schema
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema]
                     ).remove_metadata()


def output_schema(input_schema, labels: Sequence[str]):
    import pyarrow as pa
    added = [pa.field(n, pa.string() if n in ("stance", "stance_note") else pa.float64())
             for n in score_columns(labels)]
    return pa.schema(list(input_schema) + added)


def read_shard(job: Dict, shard: Dict):
    """The rows of one shard as an Arrow table with the input schema, and how many malformed rows were
    skipped (with ``on_bad_lines='skip'``; else the first one raises)."""
    import pyarrow as pa
    path, fmt = job["inputs"][shard["file"]], job["formats"][shard["file"]]
    schema, start, stop = job["input_schema"], shard["start"], shard["stop"]
    if fmt == "parquet":
        import pyarrow.parquet as pq
        pf, pieces, offset = pq.ParquetFile(path), [], 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset < stop and offset + n > start:
                lo = max(start, offset)
                pieces.append(pf.read_row_group(g).slice(lo - offset, min(stop, offset + n) - lo))
            offset += n
        table = pa.concat_tables(pieces) if pieces else schema.empty_table()
        return _cast(table.select(schema.names), schema, path, start), 0
    if stop < 0:
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            data = fh.read()
        if fmt in ("csv", "tsv"):
            data = data[_RecordEnds(data, True).after(0):]
    else:
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(stop - start)
    if not data.strip():
        return schema.empty_table(), 0
    return _parse_csv(data, fmt, job, path, start) if fmt in ("csv", "tsv") else _parse_jsonl(data, job, path, start)


def _parse_csv(data: bytes, fmt: str, job: Dict, path: str, start: int):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    names, bad = job["input_schema"].names, []
    skip = (lambda row: bad.append(row) or "skip") if job["on_bad_lines"] == "skip" else None
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=names, encoding=job["encoding"], use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True,
                                             invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise StanceError(f"in the rows from byte {start}: {exc}", path=path,
                          hint="fix the row, or pass --on-bad-lines skip") from None
    return table, len(bad)


def _parse_jsonl(data: bytes, job: Dict, path: str, start: int):
    import pyarrow as pa
    names, records, bad = job["input_schema"].names, [], 0
    offset = start
    for raw in data.split(b"\n"):
        where, offset = offset, offset + len(raw) + 1
        try:
            text = raw.decode(job["encoding"])
            if not text.strip():
                continue
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError("a JSON line must be an object")
        except (ValueError, UnicodeDecodeError) as exc:      # JSONDecodeError is a ValueError
            if job["on_bad_lines"] == "skip":
                bad += 1
                continue
            raise StanceError(f"the line at byte {where}: {exc}", path=path,
                              hint="fix the row, or pass --on-bad-lines skip") from None
        records.append({c: record.get(c) for c in names})   # the first record's keys, as locally
    return _cast(records, job["input_schema"], path, start), bad


def _cast(rows, schema, path: str, start: int):
    import pyarrow as pa
    try:
        return rows.cast(schema) if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise StanceError(f"rows from {start} do not fit the column types of the first rows: {exc}", path=path,
                          hint="make the column's values one type") from None
