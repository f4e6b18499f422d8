"""Progress for long jobs: a bar with rate and ETA on a terminal, periodic log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional

log = logging.getLogger("stance.progress")


class Progress:
    """A tqdm bar on a terminal; otherwise a log line every 10 seconds (for CI logs and nohup runs)."""

    def __init__(self, total: Optional[int], enabled: Optional[bool], start: int = 0, unit: str = "rows",
                 desc: str = "scoring"):
        self.total, self.done, self.t0, self.last = total, start, time.time(), 0.0
        self.start, self.unit, self.desc = start, unit, desc
        tty = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        if tty:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=start, unit=unit, desc=desc, file=sys.stderr,
                            dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.time()
        if now - self.last >= 10 or (self.total and self.done >= self.total):
            self.last = now
            rate = (self.done - self.start) / max(now - self.t0, 1e-9)
            if self.total:
                eta = (self.total - self.done) / rate if rate > 0 else float("inf")
                log.info("%s: %s/%s %s (%.1f%%), %.0f %s/s, ETA %s", self.desc, f"{self.done:,}",
                         f"{self.total:,}", self.unit, 100 * self.done / max(self.total, 1), rate, self.unit,
                         _fmt_eta(eta))
            else:
                log.info("%s: %s %s, %.0f %s/s", self.desc, f"{self.done:,}", self.unit, rate, self.unit)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_eta(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


