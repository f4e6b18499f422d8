"""Peak memory of `stance score` on large exports: it should stay flat as the input grows.

Writes made-up exports of --rows/10 and --rows rows (posts of the example export, repeated, with ids and
dates), scores each with the real CLI in its own process, and prints the peak resident memory (RSS) of
each run. Flat memory is the point: the second run has ten times the rows.

    python scripts/bench_memory.py --rows 1000000 --model models/default
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from _bench_common import run_child

ROOT = Path(__file__).resolve().parents[1]


def write_export(path: Path, rows: int) -> None:
    with open(ROOT / "data/examples/export.csv", encoding="utf-8", newline="") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["post_id", "created_at", "text"])
        for i in range(rows):           # streamed: the benchmark itself stays small too
            w.writerow([i, f"2025-{9 + i % 3:02d}-{1 + i % 28:02d}T12:00:00Z", texts[i % len(texts)]])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--model", default=str(ROOT / "models/default"))
    ap.add_argument("--runtime", default="auto")
    args = ap.parse_args()
    print(f"model {args.model}, runtime {args.runtime}")
    print(f"{'rows':>10} {'input MB':>9} {'seconds':>8} {'rows/s':>8} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in (max(args.rows // 10, 1), args.rows):
            src, out = Path(tmp) / f"in_{rows}.csv", Path(tmp) / f"out_{rows}.csv"
            write_export(src, rows)
            wall, rss = run_child([sys.executable, "-m", "stance.cli", "score", str(src), "-o", str(out),
                                   "--model", args.model, "--runtime", args.runtime, "-q"])
            with open(out, "rb") as fh:
                lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
            assert lines >= rows + 1, f"output has {lines} lines for {rows} rows"
            print(f"{rows:>10,} {src.stat().st_size / 1e6:>9.1f} {wall:>8.1f} {rows / wall:>8.0f} {rss:>12}")
            src.unlink()
            out.unlink()
    print(f"peak_rss_mb: {rss}")


if __name__ == "__main__":
    main()
