"""A model repository on S3, read and pinned with the standard library only (the serving image
has neither boto3 nor protobuf): path-style requests signed with AWS Signature Version 4.

Locations are spelled as Triton spells them: `s3://BUCKET/PREFIX` (the endpoint from
PLANTDX_S3_ENDPOINT or AWS_ENDPOINT_URL, else AWS's own for the region) or
`s3://[http://|https://]HOST:PORT/BUCKET/PREFIX` (an S3-compatible endpoint, plain HTTP unless
https:// is named). Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, when set,
AWS_SESSION_TOKEN; the region from AWS_REGION or AWS_DEFAULT_REGION (us-east-1). Other
credential sources (instance roles, web identity) are not read here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

from plantdx.exceptions import RepositoryError

from .policy import (
    CONFIG,
    FOLLOWERS,
    PAIRED,
    Asked,
    asked_from,
    pin_config_text,
    policy_versions,
    versioned_models,
)

_ENDPOINT = re.compile(r"^s3://(?:(https?)://)?([0-9a-zA-Z\-.]+):([0-9]+)/(.*)$")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_SAFE = "-_.~"


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    url: str,
    *,
    region: str,
    access_key: str,
    secret_key: str,
    token: str = "",
    payload: bytes = b"",
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """The headers that sign this request (SigV4, service s3, the payload's hash signed)."""
    parts = urllib.parse.urlsplit(url)
    when = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "host": parts.netloc,
        "x-amz-content-sha256": _hash(payload),
        "x-amz-date": when,
    }
    if token:
        headers["x-amz-security-token"] = token
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe=_SAFE)}={urllib.parse.quote(v, safe=_SAFE)}" for k, v in query
    )
    names = sorted(headers)
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(urllib.parse.unquote(parts.path) or "/", safe="/" + _SAFE),
            canonical_query,
            "".join(f"{n}:{headers[n].strip()}\n" for n in names),
            ";".join(names),
            headers["x-amz-content-sha256"],
        ]
    )
    scope = f"{when[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", when, scope, _hash(canonical.encode())])
    key = _hmac(("AWS4" + secret_key).encode(), when[:8])
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    del headers["host"]  # urllib sends it
    return headers


class S3NotFoundError(RepositoryError):
    """The object (or bucket) does not exist: HTTP 404."""


@dataclass(frozen=True)
class S3Location:
    endpoint: str  # scheme://host[:port], no trailing slash
    bucket: str
    prefix: str  # no leading or trailing slash ("" for the bucket's root)
    url: str

    @classmethod
    def parse(cls, url: str, environ: Mapping[str, str] | None = None) -> S3Location:
        env = os.environ if environ is None else environ
        m = _ENDPOINT.match(url)
        if m:
            endpoint = f"{m.group(1) or 'http'}://{m.group(2)}:{m.group(3)}"
            rest = m.group(4)
        elif url.startswith("s3://"):
            region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
            endpoint = (
                env.get("PLANTDX_S3_ENDPOINT")
                or env.get("AWS_ENDPOINT_URL")
                or f"https://s3.{region}.amazonaws.com"
            )
            rest = url[len("s3://") :]
        else:
            raise RepositoryError(f"not an s3:// location: {url}")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise RepositoryError(f"no bucket in {url}")
        return cls(endpoint.rstrip("/"), bucket, prefix.strip("/"), url)

    # -- requests ------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _request(
        self, method: str, key: str, query: str = "", data: bytes = b"", timeout: float = 10.0
    ) -> bytes:
        env = os.environ
        path = urllib.parse.quote(f"/{self.bucket}/{key}" if key else f"/{self.bucket}", safe="/")
        url = f"{self.endpoint}{path}" + (f"?{query}" if query else "")
        headers = sign(
            method,
            url,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            access_key=env.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
            token=env.get("AWS_SESSION_TOKEN", ""),
            payload=data,
        )
        if data:
            headers["Content-Type"] = "application/octet-stream"  # not a form to parse
        req = urllib.request.Request(url, data=data or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            kind = S3NotFoundError if exc.code == 404 else RepositoryError
            raise kind(f"S3 {method} {self.bucket}/{key}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RepositoryError(f"S3 {method} {self.bucket}/{key}: {exc}") from None

    def get(self, *parts: str) -> bytes:
        return self._request("GET", self._key(*parts))

    def put(self, data: bytes, *parts: str) -> None:
        self._request("PUT", self._key(*parts), data=data)

    def folders(self, *parts: str) -> list[str]:
        """The names of the "folders" right under PREFIX/parts/ (common prefixes)."""
        start = self._key(*parts) + "/"
        names, token = [], ""
        while True:
            query = {"list-type": "2", "prefix": start, "delimiter": "/"}
            if token:
                query["continuation-token"] = token
            body = self._request("GET", "", urllib.parse.urlencode(query))
            root = ET.fromstring(body)
            for cp in root.iter(f"{_NS}CommonPrefixes"):
                value = cp.findtext(f"{_NS}Prefix") or ""
                names.append(value[len(start) :].strip("/"))
            token = root.findtext(f"{_NS}NextContinuationToken") or ""
            if not token:
                return names

    def objects(self, *parts: str) -> list[str]:
        """Every object under PREFIX/parts/, as paths relative to PREFIX (a "folder/" marker
        ends with a slash)."""
        start = self._key(*parts)
        start = start + "/" if start else ""
        base = self.prefix + "/" if self.prefix else ""
        found, token = [], ""
        while True:
            query = {"list-type": "2", "prefix": start}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self._request("GET", "", urllib.parse.urlencode(query)))
            for item in root.iter(f"{_NS}Contents"):  # "folder/" markers included
                key = item.findtext(f"{_NS}Key") or ""
                found.append(key[len(base) :])
            token = root.findtext(f"{_NS}NextContinuationToken") or ""
            if not token:
                return found

    def download(self, dest: str | os.PathLike[str], *parts: str) -> int:
        """Copy every object under PREFIX/parts/ into `dest` (same relative paths); a count."""
        from pathlib import Path

        keys = self.objects(*parts)
        for key in keys:
            if ".." in key.split("/"):
                raise RepositoryError(f"refusing the object name {key!r}")
            path = Path(dest) / key
            if key.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.get(key))
        return len(keys)

    def versions(self, model: str) -> list[int]:
        return sorted(int(n) for n in self.folders(model) if n.isdigit())

    # -- the repository --------------------------------------------------------------------
    def asked(self) -> Asked:
        configs = {name: self.get(name, CONFIG).decode() for name in PAIRED}
        available = {name: self.versions(name) for name in PAIRED}
        return asked_from(configs, available, self.url)

    def pinned_models(self) -> tuple[str, ...]:
        """The models a pin writes: the pair and the followers the repository has."""
        present = set(self.folders())
        return versioned_models(m for m in FOLLOWERS if m in present)

    def pin(self, version: int) -> list[int]:
        """Write `specific { versions: N }` into preprocess's then classifier's config (a
        follower seeing one written and not the other waits), then the followers' (a follower
        without N: no explanations for N); returns what the repository serves then."""
        configs = {}
        for name in self.pinned_models():
            have = self.versions(name)
            if version not in have and name in PAIRED:
                raise RepositoryError(
                    f"{self.url} has no version {version} of {name} (it has "
                    f"{', '.join(map(str, have)) or 'none'})"
                )
            configs[name] = pin_config_text(self.get(name, CONFIG).decode(), version)
        for name, text in configs.items():
            self.put(text.encode(), name, CONFIG)
        check = self.get(PAIRED[-1], CONFIG).decode()
        return policy_versions(check, self.versions(PAIRED[-1]))
