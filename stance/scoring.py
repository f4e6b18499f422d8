"""Batch scoring of exports: streaming, checkpointed, resumable, never half-written.

Rows are read, scored and written in chunks, so memory stays flat whatever the
input size. Output goes to ``OUTPUT.partial`` and is renamed when complete;
after every chunk a small checkpoint ``OUTPUT.ckpt.json`` records how far the
run got, so ``--resume`` continues after Ctrl-C or kill -9 with no lost or
duplicated rows.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .errors import StanceError
from .folder import file_sha256, folder_digest
from .io import TableReader, TableWriter, detect_format, excel_safe
from .outputs import PartialOutput, count_rows, provenance, write_provenance
from .progress import Progress

log = logging.getLogger("stance.score")
CHECKPOINT_VERSION = 1


@dataclass
class ScoreOptions:
    text_column: Union[str, List[str]] = "text"     # several: joined with a blank line (title + body)
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
    out = PartialOutput(output, out_fmt)
    if options.excel_safe and out_fmt not in ("csv", "tsv"):
        log.warning("--excel-safe changes only CSV and TSV output; %s is written as is", out_fmt)
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

    readers = open_inputs(inputs, options)
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


def _score_locked(readers, out: PartialOutput, clf, options: ScoreOptions, columns, state, summary,
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
    if resume and previous.get("rows_done") and _partial_shorter(out, previous):
        raise StanceError("cannot resume: the partial output is shorter than the checkpoint records (it was cut or "
                          "replaced), so rows would be lost", path=out.partial,
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

    total = sum(filter(None, (count_rows(p, r.format) for p, r in zip(inputs, readers)))) if "-" not in inputs else None
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
            log.error("stopped after %s rows; finished chunks are kept: rerun with --resume once the cause is "
                      "fixed (if that means changing an input file, the run starts over)", f"{state['rows_done']:,}")
        elif not out.stdout:
            out.clean()
        raise
    progress.close()
    for r in readers:
        summary.skipped_lines.extend((r.path, line, reason) for line, reason in r.skipped)
    summary.rows = state["rows_done"]
    summary.scored = sum(summary.stances.values())
    summary.seconds = time.time() - t0
    return summary


def _partial_shorter(out: PartialOutput, ckpt: Dict) -> bool:
    """Whether the partial output lacks what the checkpoint says was written (bytes, or Parquet parts)."""
    if out.format == "parquet":
        return any(not os.path.exists(out.part(i)) for i in range(ckpt.get("parts", 0)))
    return os.path.getsize(out.partial) < ckpt.get("output_bytes", 0)


def text_columns(text_column: Union[str, Sequence[str]]) -> List[str]:
    return [text_column] if isinstance(text_column, str) else list(text_column)


def open_inputs(paths: Sequence[str], options: ScoreOptions) -> List[TableReader]:
    """Open every input, each checked for the text column(s) and the id column (both engines)."""
    readers = [TableReader(p, format=options.input_format, encoding=options.encoding,
                           on_bad_lines=options.on_bad_lines).open() for p in paths]
    for r in readers:
        for name in text_columns(options.text_column):
            r.require_column(name, "text")
        if options.id_column:
            r.require_column(options.id_column, "id")
    return readers


def refuse_taken(columns: Sequence[str], added: Sequence[str], path: str) -> None:
    """Never overwrite a user's column (a gold `stance` column, say) without a word (both engines)."""
    taken = [c for c in columns if c in added]
    if taken:
        raise StanceError(f"the input already has column(s) {', '.join(taken)}, which scoring adds",
                          path=path, column=taken[0],
                          hint="rename them in the input (e.g. stance -> gold_stance) before scoring")


def _output_columns(readers: List[TableReader], clf) -> List[str]:
    """Input columns then the scores. JSONL inputs give the union of their keys (a key may first
    appear on the last line); other inputs must share the first one's columns."""
    first = readers[0].all_columns()
    for r in readers[1:]:
        columns = r.all_columns()
        if r.format == "jsonl" and readers[0].format == "jsonl":
            first += [c for c in columns if c not in first]
        elif columns != first:
            raise StanceError("columns differ from the first input's "
                              f"({', '.join(first)})", path=r.path, line=1)
    added = clf.output_columns
    refuse_taken(first, added, readers[0].path)
    return first + added


def _check_keys(reader: TableReader, chunk, columns: List[str], added: List[str], out: PartialOutput) -> None:
    """JSONL read from stdin cannot be scanned ahead: a key not seen before must not be dropped or
    overwritten silently."""
    known = set(columns)
    for row in chunk:
        for key in row.values:
            if key not in known and (key in added or out.format != "jsonl"):
                raise StanceError(f"key '{key}' first appears here, after the output columns were fixed",
                                  path=reader.path, line=row.line, column=key,
                                  hint="score from a file (its keys are collected first) or write JSONL")


def _run(readers, out: PartialOutput, clf, options: ScoreOptions, columns, state, summary, progress) -> None:
    skip = state["rows_done"]
    if out.stdout:
        raw = sys.stdout
    elif out.format != "parquet":
        raw = out.open_text(state["output_bytes"])     # bytes after the last checkpoint are dropped
    else:
        out.keep_parts(state["parts"])
    base_schema = _common_arrow_schema(readers)
    numeric = frozenset(c for c in clf.output_columns if c == "confidence" or c.startswith("p_"))
    header_needed = skip == 0
    seen = 0

    def emit(text: str) -> None:
        if out.stdout:
            raw.write(text)
            raw.flush()
        else:
            raw.write(out.encode(text))
            raw.flush()
            os.fsync(raw.fileno())
            state["output_bytes"] = raw.tell()

    try:
        for reader in readers:
            for chunk in reader.chunks(options.chunk_size):
                if seen + len(chunk) <= skip:
                    seen += len(chunk)
                    continue
                if seen < skip:                  # a chunk boundary that moved (not expected)
                    chunk = chunk[skip - seen:]
                    seen = skip
                if reader.path == "-" and reader.format == "jsonl":
                    _check_keys(reader, chunk, columns, clf.output_columns, out)
                records = [r.values for r in chunk]
                scored, notes = clf.score_records(records, options.text_column, options.min_confidence,
                                                  options.batch_size)
                if options.excel_safe and out.format in ("csv", "tsv"):    # JSONL and Parquet are not spreadsheets
                    scored = [{k: excel_safe(v) for k, v in rec.items()} for rec in scored]
                if out.format == "parquet" and not out.stdout:
                    out.write_part(state["parts"], scored, columns, base_schema, numeric)
                    state["parts"] += 1
                else:
                    buf = io.StringIO()
                    TableWriter(buf, out.format, columns, write_header=header_needed,
                                escape_formulas=options.excel_safe).write(scored)
                    header_needed = False
                    emit(buf.getvalue())
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
            emit(buf.getvalue())
    finally:
        if not out.stdout and out.format != "parquet":
            raw.close()
    if out.stdout:
        return
    meta = provenance(clf, state, options.text_column, options.min_confidence)
    if out.format == "parquet":
        out.merge_parts(state["parts"], columns, meta)
    else:
        os.replace(out.partial, out.path)
    write_provenance(out.path, meta)
    os.remove(out.ckpt)


def _common_arrow_schema(readers: List[TableReader]):
    """The input types to keep in Parquet output: those of Parquet inputs that all agree."""
    schemas = [r.arrow_schema for r in readers]
    if any(s is None for s in schemas) or any(not s.equals(schemas[0]) for s in schemas[1:]):
        return None
    return schemas[0]
