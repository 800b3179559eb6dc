"""Shared plumbing for benchmark scripts: timing, peak memory, JSON results.

Every benchmark prints its figures and writes them to ``benchmarks/results/<name>.json`` so the
closing notes of issues can cite numbers produced by a command, not remembered ones.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(os.environ.get("KGOPS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATASETS = SHARED / "datasets"


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished children) in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command in a fresh process and return wall time and its own peak RSS.
    Uses GNU time's format via /proc-free resource accounting of a dedicated child."""
    code = ("import resource,subprocess,sys,time,json;t=time.perf_counter();"
            "r=subprocess.run(sys.argv[1:]);"
            "print(json.dumps({'rc':r.returncode,'wall_s':time.perf_counter()-t,"
            "'peak_rss_mib':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}),"
            "file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *cmd], env=env, capture_output=True,
                          text=True)
    last = proc.stderr.strip().splitlines()[-1]
    out = json.loads(last)
    if out["rc"] != 0:
        raise RuntimeError(f"benchmark command failed ({out['rc']}): {' '.join(cmd)}\n"
                           f"{proc.stderr[-3000:]}")
    out["stdout"] = proc.stdout
    return out


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.t0


def cpu_facts() -> dict:
    """The CPU a figure was measured on: its model and the vector units that decide the
    training step's speed (a 2-core AVX2-only EPYC takes 5-7 times as long per step as the
    2-core machine with bfloat16 units, where ``--precision auto`` is bf16, that measured the
    figures before 2026-12-04)."""
    import torch

    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    units = sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    return {"cpu": model, "cpu_units": units,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def write_results(name: str, results: dict) -> Path:
    """Print a compact table and write ``results/<name>.json`` with machine facts."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], **cpu_facts()},
        "results": results,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return path


def read_results(name: str) -> dict:
    """What :func:`write_results` wrote for ``name`` on an earlier run (``created_at``,
    ``machine``, ``results``); ``{"results": {}}`` when there is none. Benchmarks that
    re-measure some sections keep the others from it."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"results": {}}


def start_local_ray(num_cpus: int = 2, attempts: int = 3) -> None:
    """A local Ray instance for an in-process benchmark, retried: a loaded machine can time
    Ray's start-up out, and a benchmark that waited an hour for the CPU lock should not die of it."""
    import logging

    import ray

    from kg_ops.raycluster import init_ray

    for attempt in range(attempts):
        try:
            init_ray(None, num_cpus=num_cpus)
            return
        except Exception as exc:
            logging.getLogger("benchmarks").warning("Ray did not start (%s); retrying", exc)
            ray.shutdown()
            if attempt == attempts - 1:
                raise
