"""The artifact store, run against a local directory and a real local S3 server alike."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from kg_ops.devcluster import free_ports
from kg_ops.manifest import MANIFEST_NAME, Stage, StageInputError, read_manifest, require_manifest
from kg_ops.store import StoreError, check_uri, get_store, join, normalize


def test_bytes_json_parquet_roundtrip(artifact_root):
    store = get_store(artifact_root)
    store.write_bytes(join(artifact_root, "a", "b.bin"), b"\x00\x01payload")
    store.write_json(join(artifact_root, "a", "c.json"), {"x": [1, 2], "y": "z"})
    table = pa.table({"id": np.arange(5, dtype=np.int64), "key": list("abcde")})
    store.write_parquet(join(artifact_root, "t", "nodes.parquet"), table)

    assert store.read_bytes(join(artifact_root, "a", "b.bin")) == b"\x00\x01payload"
    assert store.read_json(join(artifact_root, "a", "c.json")) == {"x": [1, 2], "y": "z"}
    assert store.read_parquet(join(artifact_root, "t", "nodes.parquet")).equals(table)
    assert store.read_parquet(join(artifact_root, "t", "nodes.parquet"),
                              columns=["key"]).column_names == ["key"]


def test_listing_existence_hash_delete(artifact_root):
    store = get_store(artifact_root)
    uris = [join(artifact_root, p) for p in ("x/1.txt", "x/sub/2.txt", "y/3.txt")]
    for i, uri in enumerate(uris):
        store.write_bytes(uri, str(i).encode())
    assert store.list(join(artifact_root, "x")) == sorted(uris[:2])
    assert store.exists(uris[0]) and not store.exists(join(artifact_root, "x/missing"))
    # sha256 of b"0"
    assert store.sha256(uris[0]) == \
        "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9"
    assert store.delete_prefix(join(artifact_root, "x")) == 2
    assert store.list(join(artifact_root, "x")) == []
    assert store.list(join(artifact_root, "y")) == [uris[2]]


def test_missing_artifact_names_the_uri(artifact_root):
    store = get_store(artifact_root)
    with pytest.raises(FileNotFoundError, match="artifact not found: .*nope.json"):
        store.read_json(join(artifact_root, "nope.json"))


def test_local_path_gives_a_readable_file(artifact_root):
    store = get_store(artifact_root)
    uri = join(artifact_root, "blob.bin")
    store.write_bytes(uri, b"abc" * 1000)
    with store.local_path(uri) as path, open(path, "rb") as fh:
        assert fh.read() == b"abc" * 1000


def test_corrupt_json_and_parquet_are_reported(artifact_root):
    store = get_store(artifact_root)
    store.write_bytes(join(artifact_root, "bad.json"), b"{not json")
    store.write_bytes(join(artifact_root, "bad.parquet"), b"PAR1 garbage")
    with pytest.raises(StoreError, match="bad.json: not valid JSON"):
        store.read_json(join(artifact_root, "bad.json"))
    with pytest.raises(StoreError, match="bad.parquet: not a readable Parquet file"):
        store.read_parquet(join(artifact_root, "bad.parquet"))


@pytest.mark.parametrize(("uri", "hint"), [
    ("gs://bucket/x", r"gs:// scheme is not supported"),
    ("s3:/bucket/x", r"did you mean s3://bucket/x\?"),
    ("S3://bucket/x", r"did you mean s3://bucket/x\?"),
    ("s3:bucket/x", r"did you mean s3://bucket/x\?"),
    ("s3a://bucket/x", r"did you mean s3://bucket/x\?"),
    ("file:/tmp/x", r"did you mean file:///tmp/x\?"),
    ("file://tmp/x", r"absolute path \(file:///tmp/...\)"),
    ("https://example.org/g", r"https:// scheme is not supported"),
    ("s3:///key", r"no bucket name"),
    ("", r"empty artifact URI"),
])
def test_uri_typos_are_refused_with_the_fix(uri, hint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (get_store, normalize):
        with pytest.raises(StoreError, match=hint):
            call(uri)
    with pytest.raises(StoreError, match=hint), Stage("demo", uri):
        pass
    assert list(tmp_path.iterdir()) == []       # no folder named "s3:" or "gs:" appeared


@pytest.mark.parametrize("uri", ["relative/dir", "/abs/dir", "file:///abs/dir", "s3://b/k",
                                 "s3://b", "run:1/x", "./C:x"])
def test_supported_uris_pass(uri):
    assert check_uri(uri) == uri


def test_s3_failures_name_the_uri_and_the_fix(s3_server, s3_bucket, monkeypatch):
    missing = "s3://no-such-bucket-kgops/x/_manifest.json"
    with pytest.raises(StoreError, match=r"no-such-bucket-kgops/x/_manifest.json: bucket "
                                         r"'no-such-bucket-kgops' does not exist"):
        get_store(missing).exists(missing)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-kgops' does not exist"):
        get_store(missing).write_bytes(missing, b"x")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)   # it caches the credentials it found
    uri = s3_bucket + "/a.bin"
    with pytest.raises(StoreError, match=r"a.bin: no S3 credentials found.*AWS_ACCESS_KEY_ID"):
        get_store(uri).read_bytes(uri)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with pytest.raises(StoreError, match=rf"a.bin: cannot reach the S3 endpoint at {closed}"):
        get_store(uri).read_bytes(uri)


def test_local_write_over_a_file_is_explained(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match=r"f/out.json: cannot write: a file stands where a "
                                         "directory is needed"):
        get_store(str(tmp_path)).write_json(str(tmp_path / "f" / "out.json"), {})
    with pytest.raises(StoreError, match="is a directory, not a file"):
        get_store(str(tmp_path)).read_bytes(str(tmp_path))
    with pytest.raises(StoreError, match=r"/f is an existing file: a stage writes a folder"), \
            Stage("demo", str(tmp_path / "f")):
        pass


def _run_stage(out, config, fail_after_first_file=False):
    with Stage("demo", out, config=config) as st:
        if st.reused:
            return st
        st.store.write_bytes(st.uri("part-0.bin"), b"first")
        if fail_after_first_file:
            raise RuntimeError("worker died mid-stage")
        st.store.write_bytes(st.uri("part-1.bin"), b"second")
        st.counts["parts"] = 2
    return st


def test_manifest_is_written_last_and_reused(artifact_root, capsys):
    out = join(artifact_root, "dag", "run1", "demo")
    st = _run_stage(out, {"k": 1})
    manifest = read_manifest(out)
    assert manifest["stage"] == "demo" and manifest["counts"] == {"parts": 2}
    for key in ("created_at", "inputs", "outputs", "config", "metrics", "timings", "versions"):
        assert key in manifest
    assert f"KGOPS_MANIFEST {join(out, MANIFEST_NAME)}" in capsys.readouterr().out
    # Same inputs and config: reused, nothing rewritten.
    again = _run_stage(out, {"k": 1})
    assert again.reused and again.manifest["created_at"] == st.manifest["created_at"]
    # Changed config: recomputed.
    assert not _run_stage(out, {"k": 2}).reused


def test_failure_mid_stage_leaves_no_complete_manifest(artifact_root):
    out = join(artifact_root, "dag", "run1", "demo")
    _run_stage(out, {"k": 1})
    assert read_manifest(out) is not None
    # A rerun with a new config fails half-way: the old manifest must not survive next to
    # the new, partial files.
    with pytest.raises(RuntimeError, match="worker died"):
        _run_stage(out, {"k": 2}, fail_after_first_file=True)
    assert read_manifest(out) is None
    with pytest.raises(StageInputError, match="no _manifest.json.*Run the 'demo' stage"):
        require_manifest(out, "demo")


def test_input_hash_change_forces_recompute(artifact_root):
    src = join(artifact_root, "input.tsv")
    store = get_store(artifact_root)
    store.write_bytes(src, b"a\tb\tc\n")
    out = join(artifact_root, "stage")
    with Stage("demo", out, inputs={"data": src}) as st:
        pass
    assert st.manifest["inputs"]["data"]["sha256"]
    with Stage("demo", out, inputs={"data": src}) as st2:
        pass
    assert st2.reused
    store.write_bytes(src, b"a\tb\td\n")
    with Stage("demo", out, inputs={"data": src}) as st3:
        pass
    assert not st3.reused


def test_local_files_get_normal_permissions(tmp_path):
    """Atomic writes go through a 0600 temp file; the artifact itself follows the umask."""
    import os

    uri = str(tmp_path / "a" / "x.json")
    get_store(uri).write_json(uri, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(uri).st_mode & 0o777 == 0o666 & ~mask


def test_reuse_verifies_the_listed_outputs(artifact_root, caplog):
    out = join(artifact_root, "demo")
    st = _run_stage(out, {"k": 1})
    assert st.manifest["files"] == {
        "part-0.bin": {"size": 5, "sha256": hashlib.sha256(b"first").hexdigest()},
        "part-1.bin": {"size": 6, "sha256": hashlib.sha256(b"second").hexdigest()}}
    store = get_store(out)
    store.delete(join(out, "part-1.bin"))          # an output deleted after the stage ran
    with pytest.raises(StageInputError, match=r"demo/part-1.bin is listed in .*_manifest.json "
                                              r"but missing.*Rerun the 'demo' stage"):
        require_manifest(out, "demo")
    again = _run_stage(out, {"k": 1})
    assert not again.reused and "part-1.bin is listed" in caplog.text   # recomputed
    assert store.read_bytes(join(out, "part-1.bin")) == b"second"
    assert _run_stage(out, {"k": 1}).reused
    store.write_bytes(join(out, "part-0.bin"), b"firsT")   # same size, other content
    with pytest.raises(StageInputError, match="part-0.bin: content differs from the SHA-256"):
        require_manifest(out, "demo")
    store.write_bytes(join(out, "part-0.bin"), b"first, truncated? no: longer")
    with pytest.raises(StageInputError, match=r"part-0.bin has 28 bytes but .* records 5"):
        require_manifest(out, "demo")


def test_an_edited_manifest_is_caught(artifact_root):
    out = join(artifact_root, "demo")
    _run_stage(out, {"k": 1})
    store = get_store(out)
    manifest = store.read_json(join(out, MANIFEST_NAME))
    manifest["counts"]["parts"] = 1                # e.g. a partition manifest's parts 2 -> 1
    store.write_json(join(out, MANIFEST_NAME), manifest)
    with pytest.raises(StageInputError, match=r"_manifest.json was edited after the stage "
                                              r"wrote it.*Rerun the 'demo' stage into"):
        require_manifest(out, "demo")
    assert not _run_stage(out, {"k": 1}).reused    # and reuse recomputes instead


def test_another_stages_artifact_is_named(artifact_root):
    out = join(artifact_root, "demo")
    _run_stage(out, {"k": 1})
    with pytest.raises(StageInputError, match=r"holds 'demo', not a graph \(kgops import"):
        require_manifest(out, "import")
