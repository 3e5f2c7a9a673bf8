"""Where captures live: a local folder or an S3 bucket prefix, behind one small interface.

Keys are relative, '/'-separated (`2025-06-01/101500-0123456789abcdef.jpg`). A local write goes
to a hidden temporary file first and is renamed into place, so a reader never sees half a photo.
S3 calls have short timeouts and no retries: the writer drops a capture rather than wait.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from plantdx.exceptions import CaptureError

from .settings import ENV_S3_ENDPOINT


class Store(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def entries(self) -> Iterator[tuple[str, int]]: ...  # (key, size)
    def delete(self, keys: list[str]) -> None: ...
    def describe(self) -> str: ...


def check_key(key: str) -> str:
    """A capture key: a relative '/'-separated path with no empty, '.' or '..' part."""
    parts = key.split("/")
    if not key or "\\" in key or "\0" in key or any(part in ("", ".", "..") for part in parts):
        raise CaptureError(f"capture key {key!r} is not a plain relative path")
    return key


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        """Where `key` lives; refused when it (or a link on the way) leads out of the folder."""
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise CaptureError(f"capture key {key!r} leads outside {self.root}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def entries(self) -> Iterator[tuple[str, int]]:
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                yield path.relative_to(self.root).as_posix(), size

    def delete(self, keys: list[str]) -> None:
        dirs = set()
        for key in keys:
            path = self.root / key
            path.unlink(missing_ok=True)
            dirs.add(path.parent)
        for d in sorted(dirs, reverse=True):
            if d != self.root and d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def s3_client(*, connect_timeout: float = 2.0, read_timeout: float = 5.0) -> Any:
    """A boto3 S3 client: endpoint from PLANTDX_S3_ENDPOINT or AWS_ENDPOINT_URL, credentials
    and region the usual way; one attempt per call, short timeouts."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - boto3 is a dependency
        raise CaptureError("s3:// captures need boto3 (pip install boto3)") from exc
    endpoint = os.environ.get(ENV_S3_ENDPOINT) or os.environ.get("AWS_ENDPOINT_URL") or None
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config)


class S3Store:
    def __init__(self, url: str, client: Any = None) -> None:
        if not url.startswith("s3://"):
            raise CaptureError(f"not an s3:// URL: {url}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise CaptureError(f"no bucket in {url}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else s3_client()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def entries(self) -> Iterator[tuple[str, int]]:
        start = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(start) :], int(obj["Size"])

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # the API's limit per call
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})


def open_store(destination: str, *, client: Any = None) -> Store:
    """The store a capture destination names: `s3://BUCKET/PREFIX` or a folder."""
    if destination.startswith("s3://"):
        return S3Store(destination, client=client)
    return LocalStore(destination)
