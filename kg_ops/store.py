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
import re
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


class StoreUnavailableError(StoreError):
    """The store could not be reached (network, endpoint down): retrying later may succeed."""


SUPPORTED = "a local path, file:///absolute/path or s3://bucket/key"
# Names that are URI schemes, not the first segment of a relative path such as ``run:1/x``.
_KNOWN_SCHEMES = {"s3", "s3a", "s3n", "gs", "gcs", "file", "http", "https", "hdfs", "abfs",
                  "abfss", "az", "wasb", "wasbs", "adl", "oss", "ftp", "sftp", "minio", "r2"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.S)


def check_uri(uri: str) -> str:
    """``uri`` itself if it is a local path, ``file://`` or ``s3://`` URI; else a StoreError
    that says what was probably meant. Typos such as ``s3:/b/x``, ``S3://b/x`` or ``gs://b/x``
    must never become local folders named ``s3:`` or ``gs:``."""
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError(f"empty artifact URI {uri!r}: give {SUPPORTED}")
    if "\x00" in uri:
        raise StoreError(f"artifact URI {uri!r} contains a NUL byte")
    m = _SCHEME.match(uri)
    if m is None:
        return uri
    scheme, rest = m.group(1), m.group(2)
    if scheme == "s3" and rest.startswith("//"):
        bucket = rest[2:].split("/", 1)[0]
        if not bucket:
            raise StoreError(f"{uri}: no bucket name; write s3://bucket/key")
        return uri
    if scheme == "file" and rest.startswith("//"):
        host = rest[2:].split("/", 1)[0]
        if host not in ("", "localhost"):
            raise StoreError(f"{uri}: file:// URIs take an absolute path (file:///{host}/...), "
                             f"not a host ({host!r}); or give the plain path")
        return uri
    if not rest.startswith("/") and scheme.lower() not in _KNOWN_SCHEMES:
        return uri          # a relative path whose first segment holds a colon
    path = rest.lstrip("/")
    low = scheme.lower()
    if low in ("s3", "s3a", "s3n"):
        hint = f"did you mean s3://{path}?"
    elif low == "file":
        hint = f"did you mean file:///{path}?"
    else:
        hint = f"the {scheme}:// scheme is not supported"
    raise StoreError(f"{uri}: not a supported artifact URI ({hint}). kg_ops reads and writes "
                     f"{SUPPORTED}.")


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
    def sizes(self, prefix: str) -> dict[str, int]:
        """Size in bytes of every object under ``prefix`` (recursive), sorted by URI."""
        ...

    @abc.abstractmethod
    def size(self, uri: str) -> int | None:
        """Size in bytes of one object, or None when it does not exist."""
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

        data = self.read_bytes(uri)
        try:
            return pq.read_table(io.BytesIO(data), columns=columns)
        except (pa.ArrowException, OSError) as exc:   # damaged bytes surface as either
            raise StoreError(f"{uri}: not a readable Parquet file ({exc}). The file is damaged "
                             "or truncated: rerun the stage that wrote it with --force") from exc

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


@contextlib.contextmanager
def _local_errors(uri: str, doing: str) -> Iterator[None]:
    """OS errors of a local read/write as StoreErrors naming the path and the fix (a missing
    file for reading stays a FileNotFoundError: callers turn it into their own message)."""
    try:
        yield
    except FileNotFoundError as exc:
        if doing == "read":
            raise FileNotFoundError(f"artifact not found: {uri}") from exc
        raise StoreError(f"{uri}: cannot {doing} ({exc.strerror}: {exc.filename})") from exc
    except IsADirectoryError as exc:
        raise StoreError(f"{uri}: cannot {doing}: {exc.filename} is a directory, not a file; "
                         "check the path") from exc
    except (NotADirectoryError, FileExistsError) as exc:
        raise StoreError(f"{uri}: cannot {doing}: a file stands where a directory is needed "
                         f"({exc.filename}); choose another location or remove that file"
                         ) from exc
    except PermissionError as exc:
        raise StoreError(f"{uri}: cannot {doing}: permission denied ({exc.filename}); fix the "
                         "permissions or choose another location") from exc
    except OSError as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{uri}: cannot {doing} ({exc})") from exc


class LocalStore(ArtifactStore):
    """Local filesystem. Writes go to a temporary file first and are renamed into place, so a
    reader never sees a half-written file."""

    @staticmethod
    def path(uri: str) -> Path:
        if uri.startswith("file://"):
            return Path(urlparse(uri).path)
        return Path(uri)

    def read_bytes(self, uri: str) -> bytes:
        with _local_errors(uri, "read"):
            return self.path(uri).read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        with _local_errors(uri, "write"):
            self._write_bytes(uri, data)

    def _write_bytes(self, uri: str, data: bytes) -> None:
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
        with _local_errors(uri, "write"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.upload.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)

    def exists(self, uri: str) -> bool:
        return self.path(uri).exists()

    def size(self, uri: str) -> int | None:
        p = self.path(uri)
        return p.stat().st_size if p.is_file() else None

    def sizes(self, prefix: str) -> dict[str, int]:
        root = self.path(prefix)
        if root.is_file():
            return {prefix: root.stat().st_size}
        if not root.is_dir():
            return {}
        base = prefix.rstrip("/")
        return dict(sorted(
            (base + "/" + p.relative_to(root).as_posix(), p.stat().st_size)
            for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        ))

    def list(self, prefix: str) -> list[str]:
        return list(self.sizes(prefix))

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(uri).unlink()

    @contextlib.contextmanager
    def local_path(self, uri: str) -> Iterator[str]:
        yield str(self.path(uri))


_CREDENTIALS_FIX = ("give this machine S3 credentials the standard AWS way: AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY in its environment, a profile in ~/.aws (AWS_PROFILE) "
                    "or an instance role; on a Ray cluster, on every Ray node")
_MISSING_KEY = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AllAccessDisabled"}


def s3_error(uri: str, exc: BaseException, endpoint: str | None = None) -> Exception:
    """The botocore exception ``exc`` (raised for ``uri``) as a clear error: FileNotFoundError
    for a missing object (callers handle that), else a StoreError naming URI, cause and fix."""
    from botocore import exceptions as bx

    where = f" at {endpoint}" if endpoint else ""
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return StoreError(f"{uri}: no S3 credentials found ({exc}); {_CREDENTIALS_FIX}")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError
                  | bx.ConnectionClosedError):
        return StoreUnavailableError(f"{uri}: cannot reach the S3 endpoint{where} ({exc}). Check "
                          "AWS_ENDPOINT_URL (or KGOPS_S3_ENDPOINT_URL) and the network; retry "
                          "when the store is back")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code, msg = str(err.get("Code", "")), str(err.get("Message", "")) or str(exc)
        if code in _MISSING_KEY:
            return FileNotFoundError(f"artifact not found: {uri}")
        if code == "NoSuchBucket":
            return StoreError(f"{uri}: bucket {S3Store.split(uri)[0]!r} does not exist{where}. "
                              "Create it, or fix the bucket name in the URI")
        if code in _DENIED:
            return StoreError(f"{uri}: S3 refused the credentials or access ({code}: {msg}); "
                              f"check the key and the bucket policy, or {_CREDENTIALS_FIX}")
        return StoreError(f"{uri}: S3 error {code or type(exc).__name__}: {msg}")
    if isinstance(exc, bx.BotoCoreError):
        return StoreError(f"{uri}: S3 client error ({exc})")
    return exc  # type: ignore[return-value]


class S3Store(ArtifactStore):
    """S3 or any S3-compatible endpoint through boto3. Each object PUT is atomic. Every botocore
    error leaves as a FileNotFoundError (missing object) or a StoreError naming the URI."""

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

    @contextlib.contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise s3_error(uri, exc, self.client.meta.endpoint_url) from exc

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = self.split(uri)
        with self._errors(uri):
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = self.split(uri)
        with self._errors(uri):
            self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def upload_file(self, path: str, uri: str) -> None:
        from boto3.exceptions import S3UploadFailedError

        bucket, key = self.split(uri)
        with self._errors(uri):
            try:
                self.client.upload_file(path, bucket, key)
            except S3UploadFailedError as exc:   # boto3 wraps the ClientError of the PUT
                if isinstance(exc.__context__, Exception):
                    raise exc.__context__ from exc
                raise StoreError(f"{uri}: upload failed ({exc})") from exc

    def exists(self, uri: str) -> bool:
        bucket, key = self.split(uri)
        try:
            with self._errors(uri):
                self.client.head_object(Bucket=bucket, Key=key)
            return True
        except FileNotFoundError:
            if not self._bucket_exists(uri):
                raise StoreError(f"{uri}: bucket {bucket!r} does not exist at "
                                 f"{self.client.meta.endpoint_url}. Create it, or fix the "
                                 "bucket name in the URI") from None
            return False

    def _bucket_exists(self, uri: str) -> bool:
        bucket, _ = self.split(uri)
        try:
            with self._errors(uri):
                self.client.head_bucket(Bucket=bucket)
            return True
        except FileNotFoundError:
            return False

    def size(self, uri: str) -> int | None:
        bucket, key = self.split(uri)
        try:
            with self._errors(uri):
                return int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except FileNotFoundError:
            return None

    def sizes(self, prefix: str) -> dict[str, int]:
        bucket, key = self.split(prefix)
        key = key.rstrip("/")
        out: dict[str, int] = {}
        with self._errors(prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key + "/" if key else ""):
                out.update({f"s3://{bucket}/{obj['Key']}": int(obj["Size"])
                            for obj in page.get("Contents", [])})
        if not out and key:
            size = self.size(prefix)
            if size is not None:
                out[prefix] = size
        return dict(sorted(out.items()))

    def list(self, prefix: str) -> list[str]:
        return list(self.sizes(prefix))

    def delete(self, uri: str) -> None:
        bucket, key = self.split(uri)
        with self._errors(uri):
            self.client.delete_object(Bucket=bucket, Key=key)

    @contextlib.contextmanager
    def local_path(self, uri: str) -> Iterator[str]:
        bucket, key = self.split(uri)
        with tempfile.TemporaryDirectory(prefix="kgops-") as tmp:
            path = os.path.join(tmp, os.path.basename(key) or "object")
            with self._errors(uri):
                self.client.download_file(bucket, key, path)
            yield path


def get_store(uri: str, **s3_options: Any) -> ArtifactStore:
    """The store that serves ``uri``. ``s3_options`` go to the boto3 client (e.g. endpoint_url)."""
    check_uri(uri)
    if is_s3(uri):
        return S3Store(**s3_options)
    return LocalStore()


def normalize(uri: str) -> str:
    """Absolute local paths for plain paths, so manifests record unambiguous locations."""
    check_uri(uri)
    if is_s3(uri) or uri.startswith("file://"):
        return uri.rstrip("/")
    return str(Path(uri).expanduser().resolve())
