"""Progress lines for long loops: done/total, rate, ETA, at most every few seconds.

The lines go to the ``logging`` system, so they reach the Ray job log and from there the Airflow
task log."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("kg_ops.progress")


def _fmt_secs(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


class Progress:
    """``p = Progress("encode/text", total=n, unit="rows"); p.update(k) ...; p.done()``."""

    def __init__(self, phase: str, total: int | None = None, unit: str = "rows",
                 every_s: float = 5.0, logger: logging.Logger | None = None):
        self.phase, self.total, self.unit, self.every_s = phase, total, unit, every_s
        self.log = logger or log
        self.n = 0
        self.t0 = self._last = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float:
        return self.n / max(self.elapsed, 1e-9)

    def update(self, k: int = 1, **extra: object) -> None:
        self.n += k
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._emit(extra)

    def done(self, **extra: object) -> None:
        self._emit(extra, final=True)

    def _emit(self, extra: dict, final: bool = False) -> None:
        parts = [f"{self.phase}: {self.n:,}"]
        if self.total:
            parts[0] += f"/{self.total:,} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{self.rate:,.0f} {self.unit}/s")
        if final:
            parts.append(f"done in {_fmt_secs(self.elapsed)}")
        elif self.total and self.rate > 0:
            parts.append(f"ETA {_fmt_secs((self.total - self.n) / self.rate)}")
        parts.extend(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in extra.items())
        self.log.info(", ".join(parts))
