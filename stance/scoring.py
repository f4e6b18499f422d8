"""Batch scoring of exports: streaming, checkpointed, resumable, never half-written.

Rows are read, scored and written in chunks, so memory stays flat whatever the
input size. Output goes to ``OUTPUT.partial`` and is renamed when complete;
after every chunk a small checkpoint ``OUTPUT.ckpt.json`` records how far the
run got, so ``--resume`` continues after Ctrl-C or kill -9 with no lost or
duplicated rows.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import StanceError
from .folder import file_sha256, folder_digest
from .io import TableReader, TableWriter, detect_format, excel_safe
from .progress import Progress

log = logging.getLogger("stance.score")
CHECKPOINT_VERSION = 1


@dataclass
class ScoreOptions:
    text_column: str = "text"
    id_column: Optional[str] = None
    batch_size: int = 64
    chunk_size: int = 4096
    input_format: Optional[str] = None
    output_format: Optional[str] = None
    min_confidence: Optional[float] = None
    resume: bool = False
    excel_safe: bool = False
    encoding: str = "utf-8"
    on_bad_lines: str = "error"
    progress: Optional[bool] = None      # None: a bar on a terminal, log lines otherwise


@dataclass
class ScoreSummary:
    rows: int = 0
    scored: int = 0
    stances: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    skipped_lines: List[Tuple[str, int, str]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    output: str = ""

    def to_text(self) -> str:
        lines = [f"labelled {self.scored:,} of {self.rows:,} rows -> {self.output}"
                 + (f" (resumed after {self.resumed_from:,} rows)" if self.resumed_from else "")]
        for label, count in self.stances.most_common():
            lines.append(f"  {label:<10} {count:>10,}  {count / max(self.scored, 1):6.1%}")
        if self.notes.get("uncertain"):
            lines.append(f"  uncertain rows (below --min-confidence): {self.notes['uncertain']:,}")
        for note in ("empty_text", "missing_text"):
            if self.notes.get(note):
                lines.append(f"  rows with no label ({note}): {self.notes[note]:,}")
        if self.notes.get("truncated"):
            lines.append(f"  texts truncated to the model's length limit: {self.notes['truncated']:,}")
        if self.skipped_lines:
            lines.append(f"  malformed lines skipped: {len(self.skipped_lines):,}")
            for path, line, reason in self.skipped_lines[:5]:
                lines.append(f"    {path}:{line}: {reason}")
        rate = (self.rows - self.resumed_from) / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"  {rate:,.0f} rows/s over {self.seconds:,.1f} s")
        return "\n".join(lines)


def _count_rows(path: str, fmt: str) -> Optional[int]:
    """Approximate row count for progress (lines; exact unless fields hold newlines)."""
    if path == "-" or path.endswith(".gz"):
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as fh:
        n = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    return max(n - (1 if fmt in ("csv", "tsv") else 0), 0)


class _Output:
    """The partial output and its checkpoint, for CSV/TSV/JSONL (byte offsets) or Parquet (parts)."""

    def __init__(self, path: str, fmt: str):
        self.path, self.format = path, fmt
        self.partial = path + ".partial"
        self.ckpt = path + ".ckpt.json"
        self.stdout = path == "-"

    def lock(self) -> None:
        """Hold OUTPUT.lock for this run: a second run on the same output stops instead of corrupting it."""
        self._lock = open(self.path + ".lock", "a+")
        try:
            import fcntl
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:     # no fcntl (Windows): runs are not guarded against each other
            pass
        except OSError:
            self._lock.close()
            raise StanceError("another `stance score` run is writing this output", path=self.path,
                              hint="wait for it to finish, or write to another file") from None

    def unlock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None and not lock.closed:
            try:
                os.remove(self.path + ".lock")
            except OSError:
                pass
            lock.close()

    def clean(self) -> None:
        for p in (self.partial, self.ckpt):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)

    def read_checkpoint(self) -> Optional[dict]:
        try:
            return json.loads(Path(self.ckpt).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def write_checkpoint(self, state: dict) -> None:
        tmp = self.ckpt + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.ckpt)


def score_files(inputs: Sequence[str], output: str, clf, options: Optional[ScoreOptions] = None) -> ScoreSummary:
    """Score every row of ``inputs`` into ``output`` with a `StanceClassifier`; see the module docstring."""
    options = options or ScoreOptions()
    if not inputs:
        raise StanceError("no input files given")
    if output != "-" and os.path.isdir(output):
        raise StanceError("the output is a folder; give a file name", path=output)
    out_fmt = options.output_format or (detect_format(output) if output != "-" else "csv")
    if inputs.count("-") and options.resume:
        raise StanceError("--resume needs input files, not stdin")
    out = _Output(output, out_fmt)
    if out.stdout and options.resume:
        raise StanceError("--resume needs an output file, not stdout")
    if out.stdout and out_fmt == "parquet":
        raise StanceError("Parquet cannot be written to stdout", hint="write to a file, or use --format csv or jsonl")
    if not out.stdout:
        for path in inputs:
            if path != "-" and Path(path).resolve() == Path(output).resolve():
                raise StanceError("the output would overwrite an input", path=output)
        parent = Path(output).resolve().parent
        if not parent.is_dir():
            raise StanceError("the output folder does not exist", path=str(parent))

    readers = [TableReader(p, format=options.input_format, encoding=options.encoding,
                           on_bad_lines=options.on_bad_lines) for p in inputs]
    for r in readers:
        r.open()
        r.require_column(options.text_column, "text")
        if options.id_column:
            r.require_column(options.id_column, "id")
    columns = _output_columns(readers, clf)

    state = {
        "version": CHECKPOINT_VERSION,
        "inputs": [{"path": os.path.abspath(p), "sha256": file_sha256(p)} for p in inputs if p != "-"],
        "model": folder_digest(clf.folder),
        "options": {k: v for k, v in asdict(options).items() if k in ("text_column", "min_confidence", "excel_safe",
                                                                       "output_format", "encoding")},
        "format": out_fmt, "rows_done": 0, "output_bytes": 0, "parts": 0,
        "stances": {}, "notes": {},
    }
    summary = ScoreSummary(output=output)
    if not out.stdout:
        out.lock()
    try:
        return _score_locked(readers, out, clf, options, columns, state, summary, inputs)
    finally:
        out.unlock()


def _score_locked(readers, out: "_Output", clf, options: ScoreOptions, columns, state, summary,
                  inputs) -> ScoreSummary:
    previous = out.read_checkpoint() if not out.stdout else None
    resume = options.resume
    if resume and previous is None:
        log.warning("--resume: no unfinished run of this output; starting a fresh one")
        resume = False
    if resume and previous.get("rows_done") and not os.path.exists(out.partial):
        raise StanceError("cannot resume: the partial output is gone (the checkpoint says "
                          f"{previous['rows_done']:,} rows were written to {out.partial})", path=out.ckpt,
                          hint="run again without --resume to start over")
    if resume:
        for key in ("inputs", "model", "options", "format"):
            if previous.get(key) != state[key]:
                what = {"inputs": "the input changed", "model": "the model changed",
                        "options": "the scoring options changed", "format": "the output format changed"}[key]
                raise StanceError(f"cannot resume: {what} since the interrupted run", path=out.ckpt,
                                  hint="run again without --resume to start over")
        state = previous
        summary.resumed_from = state["rows_done"]
        summary.stances.update(state["stances"])
        summary.notes.update(state["notes"])
    elif previous is not None:
        log.warning("an unfinished earlier run of this output exists; starting over (use --resume to continue it)")
        out.clean()
    if not out.stdout and not resume:
        out.write_checkpoint(state)      # resumable even if stopped inside the first chunk

    total = sum(filter(None, (_count_rows(p, r.format) for p, r in zip(inputs, readers)))) if "-" not in inputs else None
    progress = Progress(total, options.progress, start=state["rows_done"], unit="rows", desc="scoring")
    t0 = time.time()
    try:
        _run(readers, out, clf, options, columns, state, summary, progress)
    except KeyboardInterrupt:
        progress.close()
        if not out.stdout:
            log.error("interrupted after %s rows; finished chunks are kept: rerun with --resume to continue",
                      f"{state['rows_done']:,}")
        raise
    except BaseException as exc:
        progress.close()
        if not out.stdout and state["rows_done"]:     # keep finished chunks: a fixed cause resumes, not restarts
            log.error("stopped after %s rows (%s); finished chunks are kept: fix the cause and rerun with --resume",
                      f"{state['rows_done']:,}", exc)
        elif not out.stdout:
            out.clean()
        raise
    progress.close()
    if not out.stdout:
        _write_provenance(out.path, clf, state, options)
    for r in readers:
        summary.skipped_lines.extend((r.path, line, reason) for line, reason in r.skipped)
    summary.rows = state["rows_done"]
    summary.scored = sum(summary.stances.values())
    summary.seconds = time.time() - t0
    return summary


def _write_provenance(output: str, clf, state: Dict, options: ScoreOptions) -> None:
    """OUTPUT.meta.json: how the file was made (tool, model and its digest, runtime actually used, inputs)."""
    from . import __version__
    meta = {"stance_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": sys.argv, "model": str(Path(clf.folder).resolve()), "model_digest": state["model"],
            "labels": clf.labels, "runtime": clf.runtime, "runtime_reason": clf.runtime_reason,
            "temperature": clf.meta.temperature,
            "min_confidence": clf.meta.min_confidence if options.min_confidence is None else options.min_confidence,
            "text_column": options.text_column, "inputs": state["inputs"], "rows": state["rows_done"]}
    tmp = output + ".meta.json.tmp"
    Path(tmp).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, output + ".meta.json")


def _output_columns(readers: List[TableReader], clf) -> List[str]:
    first = readers[0].columns
    for r in readers[1:]:
        if r.columns != first:
            raise StanceError("columns differ from the first input's "
                              f"({', '.join(first)})", path=r.path, line=1)
    added = clf.output_columns
    taken = [c for c in first if c in added]
    if taken:      # never overwrite a user's column (a gold `stance` column, say) without a word
        raise StanceError(f"the input already has column(s) {', '.join(taken)}, which scoring adds",
                          path=readers[0].path, column=taken[0],
                          hint="rename them in the input (e.g. stance -> gold_stance) before scoring")
    return first + added


def _run(readers, out: _Output, clf, options: ScoreOptions, columns, state, summary, progress) -> None:
    skip = state["rows_done"]
    writer_stream = None
    if out.stdout:
        writer_stream = sys.stdout
    elif out.format != "parquet":
        mode = "r+b" if skip and os.path.exists(out.partial) else "wb"
        raw = open(out.partial, mode)
        if mode == "r+b":       # drop bytes written after the last checkpoint
            raw.truncate(state["output_bytes"])
        raw.seek(0, os.SEEK_END)
    else:
        os.makedirs(out.partial, exist_ok=True)
        for name in os.listdir(out.partial):       # drop parts written after the last checkpoint
            if int(name.split("-")[1].split(".")[0]) >= state["parts"]:
                os.remove(os.path.join(out.partial, name))
    header_needed = skip == 0
    seen = 0
    try:
        for reader in readers:
            for chunk in reader.chunks(options.chunk_size):
                if seen + len(chunk) <= skip:
                    seen += len(chunk)
                    continue
                if seen < skip:                  # a chunk boundary that moved (not expected)
                    chunk = chunk[skip - seen:]
                    seen = skip
                records = [r.values for r in chunk]
                scored, notes = clf.score_records(records, options.text_column, options.min_confidence,
                                                  options.batch_size)
                if options.excel_safe:
                    scored = [{k: excel_safe(v) for k, v in rec.items()} for rec in scored]
                if out.format == "parquet" and not out.stdout:
                    _write_part(out, state["parts"], scored, columns)
                    state["parts"] += 1
                else:
                    buf = io.StringIO()
                    TableWriter(buf, out.format, columns, write_header=header_needed, escape_formulas=options.excel_safe).write(scored)
                    header_needed = False
                    if out.stdout:
                        writer_stream.write(buf.getvalue())
                        writer_stream.flush()
                    else:
                        raw.write(buf.getvalue().encode("utf-8"))
                        raw.flush()
                        os.fsync(raw.fileno())
                        state["output_bytes"] = raw.tell()
                seen += len(chunk)
                state["rows_done"] = seen
                summary.stances.update(r["stance"] for r in scored if r["stance"])
                summary.notes.update(notes)
                state["stances"], state["notes"] = dict(summary.stances), dict(summary.notes)
                if not out.stdout:
                    out.write_checkpoint(state)
                progress.update(len(chunk))
        if header_needed and out.format in ("csv", "tsv"):   # an input with a header and no rows
            buf = io.StringIO()
            TableWriter(buf, out.format, columns, write_header=True, escape_formulas=options.excel_safe)
            if out.stdout:
                writer_stream.write(buf.getvalue())
            else:
                raw.write(buf.getvalue().encode("utf-8"))
    finally:
        if not out.stdout and out.format != "parquet":
            raw.close()
    if out.stdout:
        return
    if out.format == "parquet":
        _merge_parts(out, state["parts"], columns)
    else:
        os.replace(out.partial, out.path)
    os.remove(out.ckpt)


def _part_schema(out: _Output, table):
    """Part 0 fixes the schema; columns that were all-null there become strings (or floats)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    first = os.path.join(out.partial, "part-000000.parquet")
    if os.path.exists(first):
        return pq.read_schema(first)
    fields = []
    for f in table.schema:
        if pa.types.is_null(f.type):
            numeric = f.name == "confidence" or f.name.startswith("p_")
            f = pa.field(f.name, pa.float64() if numeric else pa.string())
        fields.append(f)
    return pa.schema(fields)


def _write_part(out: _Output, index: int, records: List[Dict], columns: List[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in records])
    try:
        table = table.cast(_part_schema(out, table))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StanceError(f"rows of chunk {index + 1} do not fit the Parquet column types of the first chunk: {exc}",
                          path=out.path, hint="write CSV or JSONL instead") from None
    tmp = os.path.join(out.partial, f".part-{index:06d}.parquet")
    pq.write_table(table, tmp)
    os.replace(tmp, os.path.join(out.partial, f"part-{index:06d}.parquet"))


def _merge_parts(out: _Output, parts: int, columns: List[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    tmp = out.path + ".merging"
    writer = None
    try:
        for i in range(parts):
            table = pq.read_table(os.path.join(out.partial, f"part-{i:06d}.parquet"))
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is None:
            writer = pq.ParquetWriter(tmp, pa.schema([(c, pa.string()) for c in columns]))
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out.path)
    shutil.rmtree(out.partial, ignore_errors=True)
