"""The files a scoring run writes: the partial output, its checkpoint and lock, Parquet parts,
and the provenance record.

CSV, TSV and JSONL grow by appending chunk bytes (gzip members for ``.gz`` names, so a byte
offset is still a clean cut); Parquet is written as one part file per chunk and merged at the
end. Nothing appears under the output's own name until the run is complete.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .errors import StanceError
from .io import TableReader

PROVENANCE_KEY = b"stance.provenance"     # Parquet key-value metadata; OUTPUT.meta.json holds the same
RAY_MANIFEST, RAY_SUCCESS = "_manifest.json", "_SUCCESS"     # written last by `--engine ray` (ray_scoring.py)


class PartialOutput:
    """OUTPUT.partial (a file, or a folder of Parquet parts), OUTPUT.ckpt.json and OUTPUT.lock."""

    def __init__(self, path: str, fmt: str):
        self.path, self.format = path, fmt
        self.partial = path + ".partial"
        self.ckpt = path + ".ckpt.json"
        self.stdout = path == "-"
        self._schema = None          # Parquet parts' schema, once a part is written
        self.gzip = not self.stdout and path.lower().endswith(".gz")
        if self.gzip and fmt == "parquet":
            raise StanceError("Parquet compresses its own columns: a .gz name would hold a plain Parquet file",
                              path=path, hint="drop the .gz")

    # -- lock ---------------------------------------------------------------
    def lock(self) -> None:
        """Hold OUTPUT.lock for this run: a second run on the same output stops instead of corrupting it."""
        self._lock = hold_lock(self.path + ".lock", self.path, "this output", "another file")

    def unlock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None and not lock.closed:
            try:
                os.remove(self.path + ".lock")
            except OSError:
                pass
            lock.close()

    # -- checkpoint ---------------------------------------------------------
    def clean(self) -> None:
        for p in (self.partial, self.ckpt):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)

    def read_checkpoint(self) -> Optional[dict]:
        return read_json(self.ckpt)

    def write_checkpoint(self, state: dict) -> None:
        write_json(self.ckpt, state, indent=None, fsync=True)

    # -- text formats -------------------------------------------------------
    def open_text(self, keep_bytes: int):
        """The partial file for appending, cut back to ``keep_bytes`` (what the checkpoint vouches for)."""
        resume = keep_bytes and os.path.exists(self.partial)
        raw = open(self.partial, "r+b" if resume else "wb")
        if resume:
            raw.truncate(keep_bytes)
        raw.seek(0, os.SEEK_END)
        return raw

    def encode(self, text: str) -> bytes:
        data = text.encode("utf-8")
        # One gzip member per chunk: concatenated members are one valid .gz stream.
        return gzip.compress(data, mtime=0) if self.gzip else data

    # -- Parquet parts ------------------------------------------------------
    def part(self, index: int) -> str:
        return os.path.join(self.partial, f"part-{index:06d}.parquet")

    def keep_parts(self, parts: int) -> None:
        """Start the parts folder, dropping parts written after the last checkpoint."""
        os.makedirs(self.partial, exist_ok=True)
        for name in os.listdir(self.partial):
            if not name.startswith("part-") or int(name.split("-")[1].split(".")[0]) >= parts:
                os.remove(os.path.join(self.partial, name))

    def write_part(self, index: int, records: List[Dict], columns: List[str], base_schema=None,
                   numeric: frozenset = frozenset()) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        rows = [{c: r.get(c) for c in columns} for r in records]
        try:
            schema = self._part_schema(rows, columns, base_schema, numeric)
            table = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise StanceError(f"rows of chunk {index + 1} do not fit the Parquet column types "
                              f"{'of the first chunk' if index else 'inferred from them'}: {exc}",
                              path=self.path, hint="write CSV or JSONL instead") from None
        tmp = os.path.join(self.partial, f".part-{index:06d}.parquet")
        pq.write_table(table, tmp)
        os.replace(tmp, self.part(index))
        self._schema = schema          # every later part takes the types of the first

    def _part_schema(self, rows: List[Dict], columns: List[str], base_schema, numeric: frozenset):
        """Part 0 fixes the schema. Input columns keep a Parquet input's own types; otherwise they
        are inferred from the first chunk, all-null columns as strings; scores are float64."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        if self._schema is not None:
            return self._schema
        if os.path.exists(self.part(0)):         # a resumed run: part 0 of the interrupted one decided
            return pq.read_schema(self.part(0))
        inferred = pa.Table.from_pylist(rows).schema if base_schema is None else None
        fields = []
        for name in columns:
            if name in numeric:
                f = pa.field(name, pa.float64())
            elif base_schema is not None and name in base_schema.names:
                f = base_schema.field(name)
            elif base_schema is not None or pa.types.is_null(inferred.field(name).type):
                f = pa.field(name, pa.string())
            else:
                f = inferred.field(name)
            fields.append(f)
        return pa.schema(fields)

    def merge_parts(self, parts: int, columns: List[str], provenance: Dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        tmp = self.path + ".merging"
        metadata = {PROVENANCE_KEY: json.dumps(provenance, ensure_ascii=False).encode("utf-8")}
        writer = None
        try:
            for i in range(parts):
                table = pq.read_table(self.part(i))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema.with_metadata(metadata))
                writer.write_table(table)
            if writer is None:
                writer = pq.ParquetWriter(tmp, pa.schema([(c, pa.string()) for c in columns], metadata=metadata))
        finally:
            if writer is not None:
                writer.close()
        os.replace(tmp, self.path)
        shutil.rmtree(self.partial, ignore_errors=True)


def run_record() -> Dict:
    """Tool version, time and command line: the start of every provenance record."""
    from . import __version__
    return {"stance_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": list(sys.argv)}


def provenance(clf, state: Dict, text_column, min_confidence: Optional[float]) -> Dict:
    """How a scored file was made: tool, model and its digest, runtime actually used, inputs."""
    return {**run_record(), "model": str(Path(clf.folder).resolve()), "model_digest": state["model"],
            "labels": clf.labels, "runtime": clf.runtime, "runtime_reason": clf.runtime_reason,
            "temperature": clf.meta.temperature, "temperature_in_weights": clf.meta.temperature_in_weights,
            "blend": clf.meta.blend,
            "min_confidence": clf.meta.min_confidence if min_confidence is None else min_confidence,
            "text_column": text_column, "inputs": state["inputs"], "rows": state["rows_done"]}


class PartsReader:
    """The folder `stance score --engine ray` writes, read as one table: its Parquet parts in order."""

    def __init__(self, folder: str):
        self.path, self.format, self.skipped = folder, "parquet", []
        parts = sorted(Path(folder).glob("part-*.parquet"))
        if not (Path(folder) / RAY_SUCCESS).exists() or not parts:
            raise StanceError("not a finished `stance score --engine ray` folder (no _SUCCESS or no parts)",
                              path=folder, hint="finish the run with --resume, or give a scored file")
        self.readers = [TableReader(str(p), format="parquet").open() for p in parts]
        self.columns = self.readers[0].columns

    def chunks(self, size: int):
        for reader in self.readers:
            yield from reader.chunks(size)


def open_scored(path: str):
    """A reader of a scored file, or of a Ray output folder."""
    return PartsReader(path) if os.path.isdir(path) else TableReader(path).open()


def read_provenance(output: str) -> Dict:
    """What `stance score` recorded about a scored file: OUTPUT.meta.json, a Ray folder's _manifest.json,
    else the Parquet file's own metadata; empty when none is there (a file scored elsewhere)."""
    for candidate in (output + ".meta.json", os.path.join(output, RAY_MANIFEST)):
        recorded = read_json(candidate)
        if recorded is not None:
            return recorded
    if output.lower().endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq
            return json.loads((pq.read_schema(output).metadata or {})[PROVENANCE_KEY])
        except Exception:       # not Parquet, damaged, or no such key: nothing recorded
            pass
    return {}


def write_provenance(output: str, meta: Dict) -> None:
    """OUTPUT.meta.json beside the output."""
    write_json(output + ".meta.json", meta)


def hold_lock(lock_path: str, path: str, what: str, elsewhere: str):
    """An exclusive lock on ``lock_path`` for one run, or a StanceError when another run holds it."""
    fh = open(lock_path, "a+")
    try:
        import fcntl
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:     # no fcntl (Windows): runs are not guarded against each other
        pass
    except OSError:
        fh.close()
        raise StanceError(f"another `stance score` run is writing {what}", path=path,
                          hint=f"wait for it to finish, or write to {elsewhere}") from None
    return fh


def read_json(path) -> Optional[Dict]:
    """A small JSON file this tool wrote, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path, data: Dict, indent: Optional[int] = 2, fsync: bool = False) -> None:
    """Write under a temporary name, then rename: readers see the old file or the whole new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=indent, ensure_ascii=False)
        if fsync:       # a checkpoint must survive a power cut, not only a killed process
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def count_rows(path: str, fmt: str) -> Optional[int]:
    """Approximate row count for progress (lines; exact unless fields hold newlines)."""
    if path == "-" or path.endswith(".gz"):
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as fh:
        n = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    return max(n - (1 if fmt in ("csv", "tsv") else 0), 0)
