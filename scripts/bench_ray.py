"""Throughput of `stance score --engine ray` against the local `stance score`, on this machine.

Writes a made-up export of --rows posts (the example export's texts, repeated), then scores it, each run a
whole process (start-up, model load and, for Ray, starting the local instance included): locally with all
cores and with one thread, then on Ray with 1 and 2 workers (1 CPU each). Prints rows/s, the ratios
(Ray's overhead on one machine), the peak memory of the driver and of each Ray worker (from the run's
_manifest.json), and the CPU. Figures only: nothing is asserted.

    stance train --config models/tfidf.yaml --set output_dir=/tmp/tfidf_bench
    python scripts/bench_ray.py --model /tmp/tfidf_bench --rows 200000
    python scripts/bench_ray.py --model models/default --rows 20000      # a transformer: ~200 posts/s on 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _bench_common import run_child
from bench_memory import write_export

from stance.hardware import cpu_flags, cpu_name

ROOT = Path(__file__).resolve().parents[1]
SIMD = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimddp")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--model", default=str(ROOT / "models/tfidf"))
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--chunk-size", type=int, default=4096, help="rows per chunk (local) and per part (Ray)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to run, comma-separated")
    ap.add_argument("--gpus-per-worker", default="0", help="passed to the Ray runs (a GPU node: 1)")
    args = ap.parse_args()
    stance = [sys.executable, "-m", "stance.cli", "score"]
    common = ["--model", args.model, "--runtime", args.runtime, "--chunk-size", str(args.chunk_size), "-q"]
    flags = cpu_flags()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; SIMD flags: {' '.join(f for f in SIMD if f in flags) or 'none'}")
    print(f"date {time.strftime('%Y-%m-%d')}; model {args.model}, runtime {args.runtime}, {args.rows:,} rows")
    rates, fixed = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, tiny = tmp / "export.csv", tmp / "tiny.csv"
        write_export(src, args.rows)
        write_export(tiny, 10)
        print(f"input {src.stat().st_size / 1e6:.1f} MB")
        runs = [("local, all cores", []), ("local, --threads 1", ["--threads", "1"])]
        runs += [(f"ray, {w} worker{'s' if w > 1 else ''}", ["--engine", "ray", "--workers", str(w),
                                                             "--gpus-per-worker", args.gpus_per_worker])
                 for w in (int(x) for x in args.workers.split(","))]
        print("\n| run | seconds | rows/s | start-up s (10 rows) | rows/s after start-up | rows/s in the workers "
              "| peak RSS driver (MB) | peak RSS per worker (MB) | runtime |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for i, (name, extra) in enumerate(runs):
            ray = "--engine" in extra

            def cmd(path: Path, tag: str):
                out = tmp / (f"{tag}{i}" if ray else f"{tag}{i}.parquet")
                return [*stance, str(path), "-o", str(out), *common, *extra], out
            fixed[name] = run_child(cmd(tiny, "tiny")[0])[0]      # start-up, model load, one part
            command, out = cmd(src, "out")
            wall, rss = run_child(command)
            busy = "—"
            if ray:
                manifest = json.loads((out / "_manifest.json").read_text())
                workers = ", ".join(f"{w['peak_rss_mb']:.0f}" for w in manifest["workers"])
                runtime = manifest["runtime"]
                # The pool's rate while its busiest worker scored (start-up, model load, shut-down left out)
                busy = f"{args.rows / max(w['seconds'] for w in manifest['workers']):,.0f}"
            else:
                workers, runtime = "—", json.loads(Path(str(out) + ".meta.json").read_text())["runtime"]
            # After start-up: meaningful only where the run is much longer than the start-up
            after = args.rows / (wall - fixed[name]) if wall > 2 * fixed[name] else float("nan")
            rates[name] = (args.rows / wall, after)
            print(f"| {name} | {wall:.1f} | {rates[name][0]:,.0f} | {fixed[name]:.1f} | {rates[name][1]:,.0f} "
                  f"| {busy} | {rss:,} | {workers} | {runtime} |", flush=True)
    print()
    for base in ("local, all cores", "local, --threads 1"):
        for name, (whole, steady) in rates.items():
            if name.startswith("ray"):
                print(f"{name} / {base}: {whole / rates[base][0]:.2f}x whole runs, "
                      f"{steady / rates[base][1]:.2f}x after start-up")
    if "ray, 1 worker" in rates:
        one, local1 = rates["ray, 1 worker"], rates["local, --threads 1"]
        print("Ray's overhead on one machine (1 worker against local --threads 1): "
              f"{100 * (local1[0] / one[0] - 1):+.1f}% "
              f"time for whole runs, {100 * (local1[1] / one[1] - 1):+.1f}% after start-up")


if __name__ == "__main__":
    main()
