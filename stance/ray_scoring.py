"""`stance score --engine ray`: the local scoring, run by a pool of Ray actors, with exactly-once output.

The driver cuts the inputs into shards whose bounds depend on the files alone (byte ranges ending at
record boundaries for CSV/TSV/JSONL, row ranges for Parquet, one shard per gzipped file) and records
the plan in ``OUT_DIR/_stance_run.json``. Ray Data maps the shards over an actor pool; each actor loads
the model once, and per shard reads its rows, scores them with `StanceClassifier.score_records` (the
function the local path calls: same normalisation, runtime choice, labels and notes) and writes
``part-<shard>.parquet`` under a temporary name, renamed when complete. A part thus holds one whole
shard or does not exist, and its name says which rows it holds: a task Ray retries after an actor dies
rewrites the same part, and ``--resume`` after a killed driver scores only the shards without one.
``_manifest.json`` and ``_SUCCESS`` are written last. Parquet readers skip names starting with ``_``
or ``.``, so ``pandas.read_parquet(OUT_DIR)`` reads the rows in input order.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import StanceError
from .folder import ModelMeta, file_sha256, folder_digest
from .labels import score_columns
from .outputs import RAY_MANIFEST, RAY_SUCCESS, hold_lock, read_json, run_record, write_json
from .progress import Progress
from .scoring import ScoreOptions, ScoreSummary, open_inputs, refuse_taken, text_columns
from .shards import expand_inputs, input_schema, output_schema, plan_shards, read_shard

log = logging.getLogger("stance.score")
PLAN, MANIFEST, SUCCESS, LOCK = "_stance_run.json", RAY_MANIFEST, RAY_SUCCESS, ".lock"
PLAN_VERSION = 1
RESULT_KEYS = ("run", "shard", "rows", "runtime", "stances", "notes", "runtime_reason", "pid", "node", "seconds",
               "peak_rss_mb")


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise StanceError("--engine ray needs Ray Data, which is not installed",
                          hint="pip install 'stance[ray]'") from None
    return ray


# -- the actor --------------------------------------------------------------------------------------------

class ShardScorer:
    """A Ray Data actor: loads the model once, then reads, scores and writes whole shards."""

    def __init__(self, job: Dict):
        from .model import StanceClassifier
        self.job = job
        self.clf = StanceClassifier.load(job["model"], threads=job["threads"], runtime=job["runtime"],
                                         device=job["device"])

    def __call__(self, batch: Dict) -> Dict[str, list]:
        results = [self.try_shard({k: int(batch[k][i]) for k in ("shard", "file", "start", "stop")})
                   for i in range(len(batch["shard"]))]
        return {k: [r[k] for r in results] for k in results[0]}

    def try_shard(self, shard: Dict) -> Dict:
        """The shard's facts, or the user's error as data: Ray's wrappers would keep only its text."""
        try:
            return {**self.score_shard(shard), "error": ""}
        except StanceError as exc:
            error = {k: getattr(exc, k) for k in ("message", "path", "line", "column", "hint")}
            return {**dict.fromkeys(RESULT_KEYS, ""), "shard": shard["shard"], "error": json.dumps(error)}

    def score_shard(self, shard: Dict) -> Dict:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import resource
        job, t0 = self.job, time.time()
        table, skipped = read_shard(job, shard)
        text = job["text_column"]
        records = table.select(text_columns(text)).to_pylist()
        scored, notes = self.clf.score_records(records, text, job["min_confidence"], job["batch_size"])
        for name in self.clf.output_columns:
            field = job["output_schema"].field(name)
            table = table.append_column(field, pa.array([r[name] for r in scored], type=field.type))
        info = {"run": job["run"], "shard": shard["shard"], "rows": table.num_rows, "runtime": self.clf.runtime,
                "stances": dict(Counter(r["stance"] for r in scored if r["stance"])),
                "notes": dict(notes, **({"skipped_lines": skipped} if skipped else {}))}
        table = table.replace_schema_metadata({"stance": json.dumps(info)})
        final = os.path.join(job["out_dir"], part_name(shard["shard"]))
        tmp = os.path.join(job["out_dir"], f".{part_name(shard['shard'])}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)                  # the part appears whole or not at all
        import ray
        return {**{k: json.dumps(v) if isinstance(v, dict) else v for k, v in info.items()},
                "runtime_reason": self.clf.runtime_reason, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(), "seconds": time.time() - t0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def part_name(shard: int) -> str:
    return f"part-{shard:06d}.parquet"


def _part_info(path: Path, run: str, shard: int) -> Optional[Dict]:
    """What a finished part says of itself, or None when it is not one of this run's (or is damaged)."""
    import pyarrow.parquet as pq
    try:
        info = json.loads((pq.read_metadata(path).metadata or {}).get(b"stance", b"{}"))
    except Exception:           # a truncated file has no footer; pyarrow raises several types
        return None
    return info if info.get("run") == run and info.get("shard") == shard else None


# -- the driver -------------------------------------------------------------------------------------------

def _lock(out: Path):
    """Hold OUT_DIR/.lock: a second driver on the same folder stops instead of mixing two runs."""
    return hold_lock(str(out / LOCK), str(out), "this folder", "another folder")


def _ours(name: str) -> bool:
    return name.startswith(("part-", ".part-")) or name in (PLAN, PLAN + ".tmp", MANIFEST, MANIFEST + ".tmp", LOCK)


def _prepare(out: Path, state: Dict, resume: bool):
    """("finished", manifest) for this very run done, ("resume", plan) to continue one, ("fresh", None) to
    start; refuses to clobber a finished run or files that are not a run's."""
    def differs(old: Dict) -> Optional[str]:
        what = {"inputs": "the inputs", "model_digest": "the model", "options": "the scoring options"}
        return next((v for k, v in what.items() if old.get(k) != state[k]), None)

    if (out / SUCCESS).exists():
        manifest = read_json(out / MANIFEST) or {}
        if resume and not differs(manifest):
            return "finished", manifest
        since = f", and {differs(manifest)} changed since" if resume else ""
        raise StanceError(f"the folder holds a finished run{since}", path=str(out),
                          hint="write to another folder, or delete this one to score again")
    plan = read_json(out / PLAN)
    if plan is not None and resume:
        if differs(plan):
            raise StanceError(f"cannot resume: {differs(plan)} changed since the interrupted run",
                              path=str(out / PLAN), hint="run again without --resume to start over")
        return "resume", plan
    if plan is not None:
        log.warning("an unfinished earlier run is in this folder; starting over (use --resume to continue it)")
    elif resume:
        log.warning("--resume: no unfinished run in this folder; starting a fresh one")
    others = [p.name for p in out.iterdir() if not _ours(p.name)]
    if others:
        raise StanceError(f"the output folder holds other files ({', '.join(sorted(others)[:3])})",
                          path=str(out), hint="write to a new or empty folder")
    for p in out.iterdir():
        if p.name != LOCK:
            p.unlink()
    return "fresh", None


def _start_ray(ray, address: Optional[str], cpus: Optional[int]) -> bool:
    """Join the cluster at ``address``, or start a local instance; False when one is already connected."""
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise StanceError(f"cannot reach the Ray cluster at {address}: {exc}",
                              hint="check the address (ray status on the head node prints it)") from None
    else:
        # "local": a new instance even where `ray start` left one running on this machine
        ray.init(address="local", num_cpus=cpus or os.cpu_count(), **kwargs)
    return True


def score_with_ray(inputs: Sequence[str], out_dir: str, model_folder: str, options: Optional[ScoreOptions] = None,
                   address: Optional[str] = None, workers: Optional[int] = None, gpus_per_worker: float = 0,
                   threads: Optional[int] = None, runtime: str = "auto", resume: bool = False) -> ScoreSummary:
    """Score ``inputs`` (files, folders, globs) into Parquet parts in ``out_dir`` on Ray; see the module doc.

    ``workers`` actors (default: as many as the CPUs, or GPUs, allow) of ``threads`` CPUs each (default 1)
    and ``gpus_per_worker`` GPUs; ``address`` (or ``RAY_ADDRESS``) joins a running cluster instead of
    starting a local one. Returns the local path's `ScoreSummary`; raises `StanceError` for the user's errors."""
    options = options or ScoreOptions()
    resume = resume or options.resume
    if options.excel_safe:          # as locally: Parquet is not a spreadsheet
        log.warning("--excel-safe changes only CSV and TSV output; parquet is written as is")
    address = address or os.environ.get("RAY_ADDRESS")     # set for drivers that `ray job submit` starts
    ray = require_ray()
    paths = [os.path.abspath(p) for p in expand_inputs(inputs, options.input_format)]
    readers = open_inputs(paths, options)
    for r in readers:
        if r.columns != readers[0].columns:
            raise StanceError(f"columns differ from the first input's ({', '.join(readers[0].columns)})",
                              path=r.path, line=1)
    model = Path(model_folder).resolve()
    meta = ModelMeta.read(model)
    in_schema = input_schema(readers)
    schema = output_schema(in_schema, meta.labels)
    refuse_taken(in_schema.names, score_columns(meta.labels), paths[0])
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise StanceError("with --engine ray the output is a folder, and this is a file", path=out_dir)
    if not out.resolve().parent.is_dir():
        raise StanceError("the output's parent folder does not exist", path=str(out.resolve().parent))
    out.mkdir(exist_ok=True)

    # What a resumed run must share with the interrupted one (as the local checkpoint's keys).
    state = {"inputs": [{"path": p, "sha256": file_sha256(p)} for p in paths], "model_digest": folder_digest(model),
             "options": {"text_column": options.text_column, "min_confidence": options.min_confidence,
                         "encoding": options.encoding,
                         "on_bad_lines": options.on_bad_lines, "runtime": runtime}}
    summary = ScoreSummary(output=out_dir)
    lock, t0 = _lock(out), time.time()
    try:
        kind, plan = _prepare(out, state, resume)
        if kind == "finished":
            log.info("%s already holds this run, finished: nothing to do", out_dir)
            _fill(summary, plan, resumed=plan["rows"])
            return summary
        if kind == "fresh":
            formats = [r.format for r in readers]
            shards = plan_shards(paths, formats, options.chunk_size, options.encoding)
            run = hashlib.sha256(json.dumps([state, shards], sort_keys=True).encode()).hexdigest()[:16]
            plan = {"version": PLAN_VERSION, "run": run, **state, "formats": formats, "shards": shards}
            write_json(out / PLAN, plan)                # resumable from here on
        done = {s["shard"]: _part_info(out / part_name(s["shard"]), plan["run"], s["shard"]) for s in plan["shards"]}
        done = {k: v for k, v in done.items() if v is not None}
        for p in out.glob(".part-*.tmp"):                # left by a killed actor or driver
            p.unlink()
        todo = [s for s in plan["shards"] if s["shard"] not in done]
        summary.resumed_from = sum(v["rows"] for v in done.values())
        if done:
            log.info("resuming: %d of %d parts already written (%s rows)", len(done), len(plan["shards"]),
                     f"{summary.resumed_from:,}")
        job = {"inputs": [i["path"] for i in plan["inputs"]], "formats": plan["formats"], "run": plan["run"],
               "input_schema": in_schema, "output_schema": schema, "model": str(model), "runtime": runtime,
               "threads": threads or 1, "device": "cuda" if gpus_per_worker else "cpu",
               "text_column": options.text_column, "min_confidence": options.min_confidence,
               "batch_size": options.batch_size, "encoding": options.encoding,
               "on_bad_lines": options.on_bad_lines, "out_dir": str(out.resolve())}
        progress = Progress(len(plan["shards"]), options.progress, start=len(done), unit="parts", desc="scoring")
        try:
            seen = _run(ray, job, todo, done, progress, address, workers, gpus_per_worker) if todo else []
        finally:
            progress.close()
        missing = [s["shard"] for s in plan["shards"] if s["shard"] not in done]
        if missing:             # not expected: every task either wrote its part or raised
            raise StanceError(f"{len(missing)} parts were not written (first: {part_name(missing[0])})",
                              path=out_dir, hint="rerun with --resume")
        for p in out.glob(".part-*.tmp"):                # every task is over: these are a dead actor's
            p.unlink()
        manifest = _manifest(plan, done, seen, meta, model, options, address)
        if manifest["notes"].get("skipped_lines"):
            log.warning("malformed lines skipped (--on-bad-lines skip): %s", f"{manifest['notes']['skipped_lines']:,}")
        reasons = sorted({w["runtime_reason"] for w in manifest["workers"]})
        log.info("model %s, runtime %s%s", model, manifest["runtime"], f": {'; '.join(reasons)}" if reasons else "")
        write_json(out / MANIFEST, manifest)
        (out / SUCCESS).touch()                          # completion is marked last
        (out / PLAN).unlink()
        _fill(summary, manifest, summary.resumed_from)
    except KeyboardInterrupt:
        log.error("interrupted; finished parts are kept: rerun with --resume to continue")
        raise
    finally:
        (out / LOCK).unlink(missing_ok=True)
        lock.close()
    summary.seconds = time.time() - t0
    return summary


def _run(ray, job: Dict, todo: List[Dict], done: Dict, progress: Progress, address: Optional[str],
         workers: Optional[int], gpus: float) -> List[Dict]:
    """Map the shards left over a pool of actors; fills ``done`` as parts are written; returns per-part facts."""
    cpus = job["threads"]
    started = _start_ray(ray, address, workers * cpus if workers and not address else None)
    try:
        if not workers:
            res = ray.cluster_resources()
            workers = int(res.get("GPU", 0) // gpus) if gpus else int(res.get("CPU", 1) // cpus)
        workers = max(1, min(workers, len(todo)))
        # Ours counts parts; Ray Data's bars and per-operator log lines would bury it.
        ctx, ray_log = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
        bars, level = ctx.enable_progress_bars, ray_log.level
        ctx.enable_progress_bars = False
        ray_log.setLevel(logging.ERROR)
        log.info("scoring %d parts on Ray with %d worker(s) of %d CPU(s)%s", len(todo), workers, cpus,
                 f" and {gpus:g} GPU(s)" if gpus else "")
        # One shard per block and per call. A second call queued per actor hides the scheduler's round trip
        # between parts; with few parts, one per actor, or the first actor up takes its starting peers' share.
        in_flight = 1 if len(todo) < 4 * workers else 2
        pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=in_flight)
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            ShardScorer, fn_constructor_kwargs={"job": job}, batch_size=1, compute=pool,
            num_cpus=cpus, num_gpus=gpus or None)
        seen, rows = [], iter(ds.iter_rows())
        try:
            for row in rows:
                if row["error"]:
                    error = json.loads(row["error"])
                    raise StanceError(error.pop("message"), **error)
                done[int(row["shard"])] = {"rows": int(row["rows"]), "runtime": row["runtime"],
                                           "stances": json.loads(row["stances"]), "notes": json.loads(row["notes"])}
                seen.append({k: row[k] for k in ("node", "pid", "runtime", "runtime_reason", "peak_rss_mb",
                                                 "seconds", "rows")})
                progress.update(1)
        finally:
            getattr(rows, "close", lambda: None)()      # stops the execution (and its actors) on any exit
            ctx.enable_progress_bars = bars
            ray_log.setLevel(level)
        return seen
    finally:
        if started:
            ray.shutdown()


def _fill(summary: ScoreSummary, manifest: Dict, resumed: int) -> None:
    summary.rows, summary.resumed_from = manifest["rows"], resumed
    summary.stances.update(manifest["stances"])
    summary.notes.update(manifest["notes"])
    summary.scored = sum(summary.stances.values())


def _manifest(plan: Dict, done: Dict, workers_seen: List, meta, model: Path, options, address) -> Dict:
    import ray
    stances, notes, runtimes = Counter(), Counter(), Counter()
    for info in done.values():
        stances.update(info["stances"])
        notes.update(info["notes"])
        runtimes[info["runtime"]] += info["rows"]
    by_worker: Dict = {}
    for w in workers_seen:
        agg = by_worker.setdefault((w["node"], w["pid"]), {"node": w["node"], "pid": int(w["pid"]), "parts": 0,
                                                           "rows": 0, "seconds": 0.0, "runtime": w["runtime"],
                                                           "runtime_reason": w["runtime_reason"]})
        agg["parts"] += 1
        agg["rows"] += int(w["rows"])
        agg["seconds"] = round(agg["seconds"] + float(w["seconds"]), 3)
        agg["peak_rss_mb"] = round(max(agg.get("peak_rss_mb", 0), float(w["peak_rss_mb"])), 1)
    return {**run_record(), "ray_version": ray.__version__, "engine": "ray", "address": address, "model": str(model), "model_digest": plan["model_digest"],
            "labels": meta.labels, "temperature": meta.temperature,
            "temperature_in_weights": meta.temperature_in_weights, "blend": meta.blend,
            "min_confidence": meta.min_confidence if options.min_confidence is None else options.min_confidence,
            "runtime": runtimes.most_common(1)[0][0] if len(runtimes) == 1 else dict(runtimes),
            "text_column": options.text_column, "inputs": plan["inputs"], "options": plan["options"],
            "rows": sum(i["rows"] for i in done.values()), "stances": dict(stances), "notes": dict(notes),
            "parts": [{"file": part_name(s["shard"]), "rows": done[s["shard"]]["rows"], "input": s["file"],
                       "start": s["start"], "stop": s["stop"]} for s in plan["shards"]],
            "workers": list(by_worker.values())}
