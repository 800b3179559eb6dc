"""The CPU that Ray's own processes take while a Ray Train run trains on a local instance.

On a 2-core machine this decides how 2 one-thread workers compare with 1: a single worker
leaves Ray's processes (raylet, GCS, dashboard and its agent, the log monitor, Ray Train's
controller actors) the idle core, two workers pay for them out of their compute. The run
here is ``kgops train``'s Ray Train path in miniature: a ``TorchTrainer`` with one worker per
``--workers`` that spins on the CPU (one thread each), so the figure is Ray's, not the model's.
Every process's CPU time is read from ``/proc`` before and after ``--seconds`` of training;
the workers' own share is reported apart.

Ray Train's preemption watcher (an actor that polls for nodes being drained) is measured on
and off (``--watcher``): it alone keeps 4-5 % of a core busy, which is why ``kgops train``
turns it off on a one-node cluster.

Run: ``flock /tmp/kgops-cpu.lock .venv/bin/python benchmarks/bench_ray_overhead.py --workers 2
--repeats 2`` (~2 min per run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import read_results, start_local_ray, write_results  # noqa: E402
from kg_ops.train.cli import PREEMPTION_WATCHER  # noqa: E402


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """``pid -> (name, user + system CPU seconds)`` of every process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:           # ended in between
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(pid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _spin(config: dict) -> None:
    """A Ray Train worker that keeps one core busy for ``config["seconds"]``."""
    end = time.monotonic() + config["seconds"]
    x = 0
    while time.monotonic() < end:
        x += 1


def measure(workers: int, seconds: float) -> dict:
    import threading

    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(_spin, train_loop_config={"seconds": seconds + 30},
                           scaling_config=ScalingConfig(num_workers=workers))
    done = threading.Thread(target=trainer.fit, daemon=True)
    done.start()
    time.sleep(20)                       # workers started, controller settled
    before, t0 = cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    after, wall = cpu_seconds(), time.monotonic() - t0
    done.join()
    shares: Counter = Counter()
    for pid, (name, t) in after.items():
        if pid in before and pid != os.getpid():
            shares[name] += (t - before[pid][1]) / wall
    workers_share = sum(v for k, v in shares.items() if k.startswith("ray::RayTrainWo"))
    ray_share = {k: round(v, 4) for k, v in shares.most_common()
                 if v >= 0.001 and not k.startswith("ray::RayTrainWo")}
    return {"workers": workers, "seconds": round(wall, 1),
            "workers_cores": round(workers_share, 3),
            "other_processes_cores": round(sum(ray_share.values()), 3),
            "by_process_cores": ray_share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--watcher", default="on,off",
                    help="Ray Train's preemption watcher in the runs: on, off, or both, "
                         "measured in turn (kgops train turns it off on a one-node cluster)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each --watcher setting")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    start_local_ray()
    settings = args.watcher.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in settings}
    for _ in range(args.repeats):
        for setting in settings:           # alternated: the machine's drift hits both
            os.environ[PREEMPTION_WATCHER] = "1" if setting == "on" else "0"
            runs[setting].append(measure(args.workers, args.seconds))
            r = runs[setting][-1]
            print(f"{args.workers} spinning worker(s), preemption watcher {setting}: "
                  f"{r['workers_cores']:.2f} cores; every other process together: "
                  f"{r['other_processes_cores'] * 100:.1f} % of one core")
    results = read_results("bench_ray_overhead")["results"]
    for setting, measured in runs.items():
        results[f"local ray, {args.workers} worker(s), preemption watcher {setting}"] = {
            "workers_cores": round(float(np.mean([r["workers_cores"] for r in measured])), 3),
            "other_processes_cores": round(float(np.mean([r["other_processes_cores"]
                                                           for r in measured])), 3),
            "runs": measured}
    write_results("bench_ray_overhead", results)


if __name__ == "__main__":
    main()
