"""Reading and writing tables of posts (CSV, TSV, JSONL, Parquet; gzip; stdin/stdout).

Readers stream: they yield rows with the physical line (or row) number where
each record starts, so every error can name file, line and column. Bytes are
decoded line by line to find the exact line of bad encoding.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import sys
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, Iterator, List, Optional, Tuple

from .errors import StanceError, suggestion

FORMATS = ("csv", "tsv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}

# Posts can be long, and a stray quote can make one field swallow a file: allow
# large fields but not unbounded ones.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def detect_format(path: str, explicit: Optional[str] = None) -> str:
    """The table format from ``explicit`` or the file name (``.gz`` ignored)."""
    if explicit:
        if explicit not in FORMATS:
            raise StanceError(f"unknown format '{explicit}'; use one of {', '.join(FORMATS)}")
        return explicit
    if path == "-":
        return "csv"
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix not in _SUFFIXES:
        raise StanceError(f"cannot tell the format from the name (suffix '{suffix}')", path=path,
                          hint="use .csv, .tsv, .jsonl or .parquet, optionally .gz, or pass --format")
    return _SUFFIXES[suffix]


def _open_binary(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    p = Path(path)
    if not p.exists():
        raise StanceError("no such file", path=path)
    if p.is_dir():
        raise StanceError("is a folder, not a file", path=path)
    if path.lower().endswith(".gz"):
        return gzip.open(p, "rb")  # type: ignore[return-value]
    return open(p, "rb")


@dataclass
class Row:
    line: int                # 1-based line (CSV/JSONL) or row (Parquet) where the record starts
    values: Dict[str, object]


@dataclass
class TableReader:
    """Streams the rows of one table. ``columns`` is known after ``open()``."""

    path: str
    format: Optional[str] = None
    encoding: str = "utf-8"
    on_bad_lines: str = "error"        # or "skip"
    columns: List[str] = field(default_factory=list)
    skipped: List[Tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.format = detect_format(self.path, self.format)
        if self.on_bad_lines not in ("error", "skip"):
            raise StanceError(f"--on-bad-lines must be 'error' or 'skip', not '{self.on_bad_lines}'")
        self._rows: Optional[Iterator[Row]] = None
        self.arrow_schema = None        # Parquet inputs: the file's own column types, kept in Parquet output

    # -- public -------------------------------------------------------------
    def open(self) -> "TableReader":
        opener = {"csv": self._csv_rows, "tsv": self._csv_rows, "jsonl": self._jsonl_rows,
                  "parquet": self._parquet_rows}[self.format]
        self._rows = opener()
        # Prime the generator so the header is read and `columns` is set.
        self._first = next(self._rows, None)
        return self

    def rows(self) -> Iterator[Row]:
        if self._rows is None:
            self.open()
        if self._first is not None:
            yield self._first
        last = self._first.line if self._first is not None else 0
        try:
            for row in self._rows:  # type: ignore[union-attr]
                last = row.line
                yield row
        except (EOFError, OSError, zlib.error) as exc:      # a truncated .gz, a failing disk
            raise StanceError(f"the file cannot be read past this point: {exc}", path=self.path, line=last + 1,
                              hint="a cut-off download or copy? fetch the whole file again") from None

    def chunks(self, size: int) -> Iterator[List[Row]]:
        chunk: List[Row] = []
        for row in self.rows():
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def require_column(self, name: str, role: str = "text") -> None:
        if name not in self.columns:
            near = suggestion(name, self.columns)
            hint = f"{near} " if near else ""
            raise StanceError(f"no {role} column '{name}'", path=self.path, column=name,
                              hint=f"{hint}available columns: {', '.join(self.columns) or '(none)'}")

    # -- formats ------------------------------------------------------------
    def _encoding(self, stream: IO[bytes]) -> str:
        """The encoding to read with: as given, except that a UTF-16 byte-order mark (Excel's
        "Unicode text") is unambiguous and wins over the UTF-8 default."""
        try:
            name = codecs.lookup(self.encoding).name
        except LookupError:
            raise StanceError(f"unknown encoding '{self.encoding}'") from None
        head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""
        if name == "utf-8" and head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            return "utf-16"
        return name

    def _decoded_lines(self, stream: IO[bytes]) -> Iterator[str]:
        encoding = self._encoding(stream)
        if encoding.startswith(("utf-16", "utf-32")):
            yield from self._wide_lines(stream, encoding)   # their bytes cannot be split on 0x0A
            return
        first = "utf-8-sig" if encoding == "utf-8" else encoding
        for number, raw in enumerate(stream, start=1):
            try:
                yield raw.decode(first if number == 1 else encoding)
            except UnicodeDecodeError as exc:
                raise StanceError(f"bytes at position {exc.start + 1} of the line are not valid {encoding}",
                                  path=self.path, line=number,
                                  hint="pass --encoding (e.g. --encoding latin-1) if the file is not UTF-8") from None

    def _wide_lines(self, stream: IO[bytes], encoding: str) -> Iterator[str]:
        text = io.TextIOWrapper(stream, encoding=encoding, errors="strict", newline="")
        number = 0
        try:
            for number, line in enumerate(text, start=1):
                yield line
        except UnicodeDecodeError:
            raise StanceError(f"the bytes after line {number} are not valid {encoding}", path=self.path,
                              line=number + 1, hint="check --encoding") from None

    def _csv_rows(self) -> Iterator[Row]:
        stream = _open_binary(self.path)
        delimiter = "\t" if self.format == "tsv" else ","
        lines = _Lines(self._decoded_lines(stream))
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise StanceError("the file is empty (no header row)", path=self.path, line=1) from None
        except csv.Error as exc:
            raise StanceError(f"malformed header: {exc}", path=self.path, line=1) from None
        lines.record()
        header = [h.strip() for h in header]
        seen = set()
        for h in header:
            if h in seen:
                raise StanceError(f"column '{h}' appears twice in the header", path=self.path, line=1, column=h)
            seen.add(h)
        self.columns = header
        width = len(header)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                self._bad_record(lines, f"malformed CSV: {exc}")
                continue
            if not fields:          # blank line
                lines.record()
                continue
            if len(fields) != width:
                self._bad_record(lines, f"expected {width} fields, found {len(fields)}")
                continue
            yield Row(lines.record()[0], dict(zip(header, fields)))

    def _bad_record(self, lines: "_Lines", reason: str) -> None:
        """Skip (or stop at) the first line of a bad record. A record spanning several lines is most
        often a stray quote that swallowed the lines after it: those are read again on their own,
        so each valid one is kept and each bad one is counted."""
        span = lines.record()
        if len(span) > 1:
            reason += (f" (the record runs over lines {span[0]}-{span[-1]}: probably an unclosed quote;"
                       " the lines after the first are read again as records of their own)")
            lines.push_back(span[0] + 1)
        self._bad(span[0], reason)

    def _jsonl_rows(self) -> Iterator[Row]:
        stream = _open_binary(self.path)
        order: Dict[str, None] = {}
        for number, record in self._json_records(stream):
            if not isinstance(record, dict):
                self._bad(number, "a JSON record must be an object")
                continue
            if not order:
                order.update(dict.fromkeys(record))
                self.columns = list(order)
            yield Row(number, record)
        if not order:
            raise StanceError("the file holds no records", path=self.path)

    def _json_records(self, stream: IO[bytes]) -> Iterator[Tuple[int, object]]:
        """(line, value) of each record: one JSON value per line, or the items of one JSON array."""
        lines = self._decoded_lines(stream)
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            if text.lstrip().startswith("["):        # a .json array: parsed whole, items located by line
                yield from self._json_array(text + "".join(lines), number)
                return
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                self._bad(number, f"invalid JSON: {exc.msg} at character {exc.colno}")
                continue
            if "\\u" in text and not _encodable(value):
                self._bad(number, "a string holds a lone surrogate escape such as \\ud800, which is no character "
                                  "and cannot be written out")
                continue
            yield number, value

    def _json_array(self, text: str, first_line: int) -> Iterator[Tuple[int, object]]:
        decoder, pos, line, counted = json.JSONDecoder(), text.index("[") + 1, first_line, 0
        try:
            while True:
                pos = _skip_space(text, pos)
                if text[pos:pos + 1] == "]":
                    break
                line += text.count("\n", counted, pos)
                counted = pos
                value, pos = decoder.raw_decode(text, pos)
                yield line, value
                pos = _skip_space(text, pos)
                if text[pos:pos + 1] == ",":
                    pos += 1
                elif text[pos:pos + 1] != "]":
                    raise json.JSONDecodeError("expected ',' or ']'", text, pos)
        except json.JSONDecodeError as exc:      # no way to find the next record: stop here
            raise StanceError(f"invalid JSON array: {exc.msg}", path=self.path,
                              line=first_line + text.count("\n", 0, exc.pos)) from None

    def all_columns(self) -> List[str]:
        """Every column of the file: for JSONL the keys of all records in order of first appearance
        (a second pass over the file), since keys may first appear late; else the header."""
        if self.format != "jsonl" or self.path == "-":
            return list(self.columns)
        order: Dict[str, None] = dict.fromkeys(self.columns)
        quiet = TableReader(self.path, format="jsonl", encoding=self.encoding, on_bad_lines="skip")
        for _, record in quiet._json_records(_open_binary(self.path)):
            if isinstance(record, dict):
                order.update(dict.fromkeys(record))
        return list(order)

    def _parquet_rows(self) -> Iterator[Row]:
        import pyarrow.parquet as pq
        try:
            source = sys.stdin.buffer.read() if self.path == "-" else self.path
            pf = pq.ParquetFile(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise StanceError(f"cannot read Parquet: {exc}", path=self.path) from None
        names = list(pf.schema_arrow.names)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:       # pyarrow's row dicts would keep only the last of them
            raise StanceError(f"column '{twice[0]}' appears {names.count(twice[0])} times", path=self.path,
                              column=twice[0], hint="rename the duplicate columns before scoring")
        self.columns = names
        self.arrow_schema = pf.schema_arrow
        number = 0
        for batch in pf.iter_batches(batch_size=8192):
            for record in batch.to_pylist():
                number += 1
                yield Row(number, record)

    def _bad(self, line: int, reason: str) -> None:
        if self.on_bad_lines == "skip":
            self.skipped.append((line, reason))
            return
        raise StanceError(reason, path=self.path, line=line, hint="fix the row, or pass --on-bad-lines skip")


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _Lines:
    """Decoded lines for the csv module, numbered, with a record of the lines each CSV record took
    and a way to read some of them again (see `TableReader._bad_record`)."""

    def __init__(self, lines: Iterator[str]):
        self._lines = enumerate(lines, start=1)
        self._again: deque = deque()
        self._taken: List[Tuple[int, str]] = []

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        number, text = self._again.popleft() if self._again else next(self._lines)
        self._taken.append((number, text))
        return text

    def record(self) -> List[int]:
        """Line numbers the last record took; starts the next record."""
        taken, self._taken = self._taken, []
        self._last = taken
        return [n for n, _ in taken]

    def push_back(self, from_line: int) -> None:
        """Read the last record's lines from ``from_line`` on again."""
        self._again.extendleft(reversed([(n, t) for n, t in self._last if n >= from_line]))


def read_mapping(path: str, what: str) -> dict:
    """A YAML (or JSON) file that must hold a mapping; errors name the file."""
    import yaml
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise StanceError("no such file", path=path) from None
    except yaml.YAMLError as exc:
        raise StanceError(f"not valid YAML/JSON: {exc}", path=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StanceError(f"{what} must be a mapping", path=path)
    return data


def read_rows(path: str, **kwargs) -> Tuple[List[str], List[Row]]:
    """Whole table in memory: (columns, rows). For labelled files, not for exports."""
    reader = TableReader(path, **kwargs).open()
    rows = list(reader.rows())
    return reader.columns, rows


# ---------------------------------------------------------------------------
# writing

def excel_safe(value: object) -> object:
    """Neutralise spreadsheet formulas in user-generated text (CSV injection); numbers such as -5 stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


class TableWriter:
    """Appends chunks of rows to a CSV, TSV or JSONL file (binary-safe, resumable)."""

    def __init__(self, stream: IO[str], fmt: str, columns: List[str], write_header: bool,
                 escape_formulas: bool = False):
        if fmt not in ("csv", "tsv", "jsonl"):
            raise ValueError(fmt)
        self.stream, self.format, self.columns = stream, fmt, columns
        if fmt in ("csv", "tsv"):
            self._csv = csv.writer(stream, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
            if write_header:     # a header cell is a cell too: escaped like the rest
                self._csv.writerow([excel_safe(c) for c in columns] if escape_formulas else columns)

    def write(self, records: List[Dict[str, object]]) -> None:
        if self.format == "jsonl":
            self.stream.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
        else:
            self._csv.writerows([[_cell(r.get(c)) for c in self.columns] for r in records])


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN
        return ""
    if isinstance(value, (dict, list)):     # nested JSON stays JSON, not Python's repr
        return json.dumps(value, ensure_ascii=False, default=str)
    return value
