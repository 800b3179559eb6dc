"""One artifact-store interface over local paths and S3.

Every stage reads and writes through :func:`get_store`, so the same command runs against a laptop
directory and an S3 bucket. URIs are ``file:///abs/path``, plain paths, or ``s3://bucket/key``.
S3 settings come from the standard AWS environment/config (``AWS_ENDPOINT_URL`` included) or are
passed in; credentials are never written anywhere by this module.

This module is deliberately light (boto3, pyarrow, no torch): the Airflow side imports it too.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from kg_ops.errors import KGOpsError

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow is imported inside the Parquet methods: DAG files import this module (through the
# Airflow operators) and must parse fast; pyarrow alone costs ~0.5 s.


def join(uri: str, *parts: str) -> str:
    """Join path segments onto a URI without collapsing ``s3://``."""
    out = uri.rstrip("/")
    for part in parts:
        out = out + "/" + str(part).strip("/")
    return out


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


class StoreError(KGOpsError):
    """An artifact could not be read or written; the message names the URI."""


class ArtifactStore(abc.ABC):
    """Bytes, JSON and Parquet over one kind of storage. Subclasses implement the byte layer."""

    # --- byte layer -------------------------------------------------------------------------
    @abc.abstractmethod
    def read_bytes(self, uri: str) -> bytes:
        ...

    @abc.abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None:
        ...

    @abc.abstractmethod
    def exists(self, uri: str) -> bool:
        ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All object URIs under ``prefix`` (recursive), sorted."""
        ...

    @abc.abstractmethod
    def delete(self, uri: str) -> None:
        """Delete one object; a missing object is not an error."""
        ...

    @abc.abstractmethod
    def local_path(self, uri: str) -> contextlib.AbstractContextManager[str]:
        """A local file path holding the object's bytes, for libraries that need a path."""

    def upload_file(self, path: str, uri: str) -> None:
        with open(path, "rb") as fh:
            self.write_bytes(uri, fh.read())

    # --- derived helpers --------------------------------------------------------------------
    def delete_prefix(self, prefix: str) -> int:
        uris = self.list(prefix)
        for uri in uris:
            self.delete(uri)
        return len(uris)

    def read_json(self, uri: str) -> Any:
        try:
            return json.loads(self.read_bytes(uri))
        except json.JSONDecodeError as exc:
            raise StoreError(f"{uri}: not valid JSON ({exc}); the file is corrupt or was "
                             "not written by kg_ops") from exc

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_parquet(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(self.read_bytes(uri)), columns=columns)
        except pa.ArrowInvalid as exc:
            raise StoreError(f"{uri}: not a readable Parquet file ({exc})") from exc

    def write_parquet(self, uri: str, table: pa.Table, **kwargs: Any) -> None:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, compression=kwargs.pop("compression", "zstd"), **kwargs)
        self.write_bytes(uri, buf.getvalue())

    def sha256(self, uri: str) -> str:
        return hashlib.sha256(self.read_bytes(uri)).hexdigest()


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


class LocalStore(ArtifactStore):
    """Local filesystem. Writes go to a temporary file first and are renamed into place, so a
    reader never sees a half-written file."""

    @staticmethod
    def path(uri: str) -> Path:
        if uri.startswith("file://"):
            return Path(urlparse(uri).path)
        return Path(uri)

    def read_bytes(self, uri: str) -> bytes:
        try:
            return self.path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"artifact not found: {uri}") from exc

    def write_bytes(self, uri: str, data: bytes) -> None:
        dest = self.path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; artifacts are shared files
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def upload_file(self, path: str, uri: str) -> None:
        dest = self.path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.upload.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def exists(self, uri: str) -> bool:
        return self.path(uri).exists()

    def list(self, prefix: str) -> list[str]:
        root = self.path(prefix)
        if root.is_file():
            return [prefix]
        if not root.is_dir():
            return []
        base = prefix.rstrip("/")
        return sorted(
            base + "/" + p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        )

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(uri).unlink()

    @contextlib.contextmanager
    def local_path(self, uri: str) -> Iterator[str]:
        yield str(self.path(uri))


class S3Store(ArtifactStore):
    """S3 or any S3-compatible endpoint through boto3. Each object PUT is atomic."""

    def __init__(self, endpoint_url: str | None = None, client: Any = None, **client_kwargs: Any):
        if client is None:
            import boto3  # deferred: boto3 import costs ~0.3 s, and local runs never need it

            endpoint_url = endpoint_url or os.environ.get("KGOPS_S3_ENDPOINT_URL") or None
            client = boto3.client("s3", endpoint_url=endpoint_url, **client_kwargs)
        self.client = client

    @staticmethod
    def split(uri: str) -> tuple[str, str]:
        parsed = urlparse(uri)
        return parsed.netloc, parsed.path.lstrip("/")

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = self.split(uri)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"artifact not found: {uri}") from exc
        except self.client.exceptions.NoSuchBucket as exc:
            raise FileNotFoundError(f"bucket does not exist: {uri}") from exc

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = self.split(uri)
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def upload_file(self, path: str, uri: str) -> None:
        bucket, key = self.split(uri)
        self.client.upload_file(path, bucket, key)

    def exists(self, uri: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = self.split(uri)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        bucket, key = self.split(prefix)
        key = key.rstrip("/")
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key + "/" if key else ""):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        if not out and key and self.exists(prefix):
            return [prefix]
        return sorted(out)

    def delete(self, uri: str) -> None:
        bucket, key = self.split(uri)
        self.client.delete_object(Bucket=bucket, Key=key)

    @contextlib.contextmanager
    def local_path(self, uri: str) -> Iterator[str]:
        bucket, key = self.split(uri)
        with tempfile.TemporaryDirectory(prefix="kgops-") as tmp:
            path = os.path.join(tmp, os.path.basename(key) or "object")
            self.client.download_file(bucket, key, path)
            yield path


def get_store(uri: str, **s3_options: Any) -> ArtifactStore:
    """The store that serves ``uri``. ``s3_options`` go to the boto3 client (e.g. endpoint_url)."""
    if is_s3(uri):
        return S3Store(**s3_options)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"unsupported artifact URI scheme: {uri} (use a path, file:// or s3://)")
    return LocalStore()


def normalize(uri: str) -> str:
    """Absolute local paths for plain paths, so manifests record unambiguous locations."""
    if is_s3(uri) or uri.startswith("file://"):
        return uri.rstrip("/")
    return str(Path(uri).expanduser().resolve())
