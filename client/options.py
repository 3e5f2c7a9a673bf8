"""Connection options shared by the sync and async clients, and the error policy.

Every failure is sorted into one kind, and only `unavailable` and `overloaded` are retried: a
bad image, a refused API key or a TLS problem fails the same way every time, and a timeout has
already spent the caller's time budget. `overloaded` is a server that answered but refused the
request (its queue was full): Triton says so with the same status as an unreachable server
(gRPC UNAVAILABLE, HTTP 503), so the message tells them apart.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import ssl as ssl_lib
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from plantdx.addresses import host_of, is_loopback
from plantdx.choices import Protocol
from plantdx.exceptions import (
    ClientError,
    ConfigError,
    InferenceTimeoutError,
    InvalidImageError,
    ServerOverloadedError,
    ServerUnavailableError,
)
from plantdx.model_repository.names import ADMIN_HEADER

from .results import MODEL

ErrorKind = Literal[
    "unavailable",
    "overloaded",
    "timeout",
    "invalid_image",
    "invalid_crop",
    "denied",
    "tls",
    "failed",
]
# Transient: retried with backoff.
RETRIED: tuple[ErrorKind, ...] = ("unavailable", "overloaded")

_UNAVAILABLE_STATUS = {"502", "503", "StatusCode.UNAVAILABLE"}
_TIMEOUT_STATUS = {"504", "StatusCode.DEADLINE_EXCEEDED"}
_DENIED_STATUS = {"401", "403", "StatusCode.PERMISSION_DENIED", "StatusCode.UNAUTHENTICATED"}
_INVALID_IMAGE = re.compile(r"invalid image \((\w+)\)")
# The postprocess's refusal of a crop name, and Triton's of an ensemble without CROP.
_INVALID_CROP = "invalid crop: "
_NO_CROP_INPUT = "unexpected inference input 'CROP'"
# Triton's refusals of a request its scheduler could not queue (both answered as UNAVAILABLE),
# and a gateway's 429.
_QUEUE_FULL = "exceeds maximum queue size"
_QUEUE_TIMEOUT = "request timeout expired"
_OVERLOADED_STATUS = {"429"}


@dataclass(frozen=True)
class ClientOptions:
    url: str = "localhost:8000"
    protocol: Protocol = "http"
    timeout: float = 30.0
    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    model: str = MODEL
    model_version: str = ""
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    insecure: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # How long the classifier version read from the server is reused (see classifier_version).
    version_ttl_s: float = 5.0

    def __post_init__(self) -> None:
        if self.protocol not in get_args(Protocol):
            raise ConfigError(f"protocol must be 'http' or 'grpc', not {self.protocol!r}")
        if (
            not self.url
            or self.timeout <= 0
            or self.retries < 0
            or self.backoff_s < 0
            or self.version_ttl_s < 0
        ):
            raise ConfigError(
                f"invalid client options: url={self.url!r}, timeout={self.timeout}, "
                f"retries={self.retries}, backoff_s={self.backoff_s}, "
                f"version_ttl_s={self.version_ttl_s}"
            )
        if self.insecure and self.protocol == "grpc":
            raise ConfigError("insecure (no certificate check) is only available over HTTP")
        if bool(self.private_key) != bool(self.certificate_chain):
            raise ConfigError("client certificates need both private_key and certificate_chain")
        for path in (self.root_certificates, self.private_key, self.certificate_chain):
            if path and not os.path.isfile(path):
                raise ConfigError(f"TLS file {path} does not exist")
        # The admin key unlocks model loading: it never crosses a network in clear text.
        admin = [k for k in self.headers if k.lower().endswith(ADMIN_HEADER)]
        if admin and not self.ssl and not is_loopback(host_of(self.url)):
            raise ConfigError(
                f"refusing to send the admin key header {admin[0]} to {host_of(self.url)} "
                "without TLS: use https:// (or --ssl) or a tunnel to a loopback address "
                "(kubectl port-forward, ssh -L)"
            )

    @classmethod
    def create(cls, url: str, protocol: str, **kwargs: Any) -> ClientOptions:
        """Accepts URLs with a scheme: https:// turns TLS on, the scheme is then dropped."""
        tls = kwargs.pop("ssl", False) or url.startswith(("https://", "grpcs://"))
        if any(kwargs.get(k) for k in ("root_certificates", "certificate_chain", "insecure")):
            tls = True
        bare = re.sub(r"^[a-z]+://", "", url).rstrip("/")
        headers = dict(kwargs.pop("headers", None) or {})
        return cls(url=bare, protocol=protocol, ssl=tls, headers=headers, **kwargs)  # type: ignore[arg-type]

    def request_headers(self) -> dict[str, str]:
        """A fresh dict per call: tritonclient writes into the dict it is given, and gRPC
        metadata keys must be lower case."""
        if self.protocol == "grpc":
            return {k.lower(): v for k, v in self.headers.items()}
        return dict(self.headers)

    def grpc_channel_args(self) -> list[tuple[str, Any]]:
        """tritonclient's own channel defaults, plus a short reconnect backoff: gRPC's default
        (1 s growing to 120 s) would keep failing fast long after a restarted server is back."""
        from tritonclient.grpc import KeepAliveOptions

        keep = KeepAliveOptions()
        backoff_ms = max(100, int(self.backoff_s * 1000))
        return [
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.keepalive_time_ms", keep.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keep.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keep.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keep.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", max(backoff_ms, int(self.max_backoff_s * 1000))),
        ]

    def http_ssl_options(self) -> dict[str, str]:
        opts = {}
        if self.root_certificates:
            opts["ca_certs"] = self.root_certificates
        if self.certificate_chain and self.private_key:
            opts["certfile"] = self.certificate_chain
            opts["keyfile"] = self.private_key
        return opts

    def ssl_context(self) -> ssl_lib.SSLContext:
        """The same TLS settings as an SSLContext (aiohttp)."""
        ctx = ssl_lib.create_default_context(cafile=self.root_certificates)
        if self.certificate_chain and self.private_key:
            ctx.load_cert_chain(self.certificate_chain, self.private_key)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl_lib.CERT_NONE
        return ctx

    def delays(self) -> list[float]:
        """Sleep before each retry: exponential, capped, with jitter so that many clients
        that lost the same server do not come back in lockstep."""
        out, d = [], self.backoff_s
        for _ in range(self.retries):
            out.append(min(d, self.max_backoff_s) * random.uniform(0.8, 1.2))
            d *= 2
        return out


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else None
    return str(text or exc or type(exc).__name__).strip()


def classify(exc: BaseException) -> ErrorKind:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        msg = _message(exc)
        if _INVALID_IMAGE.search(msg):
            return "invalid_image"
        if _INVALID_CROP in msg or _NO_CROP_INPUT in msg:
            return "invalid_crop"
        # Triton answers a missing restricted-API header over gRPC with UNAVAILABLE.
        if status in _DENIED_STATUS or "is restricted, expecting header" in msg:
            return "denied"
        if status in _TIMEOUT_STATUS:
            return "timeout"
        low = msg.lower()
        if status in _OVERLOADED_STATUS or _QUEUE_FULL in low or _QUEUE_TIMEOUT in low:
            return "overloaded"
        if status in _UNAVAILABLE_STATUS:
            if "handshake" in low or "certificate" in low or "ssl" in low:
                return "tls"
            return "unavailable"
        return "failed"
    if isinstance(exc, ssl_lib.SSLError | ssl_lib.CertificateError):
        return "tls"
    if isinstance(exc, TimeoutError | socket.timeout | asyncio.TimeoutError):
        return "timeout"
    if _is_gevent_timeout(exc):
        return "timeout"
    if isinstance(exc, ConnectionError | socket.gaierror | EOFError):
        return "unavailable"
    if _is_gevent_closed(exc):
        return "unavailable"
    return _aiohttp_kind(exc) or "failed"


def _is_gevent_timeout(exc: BaseException) -> bool:
    try:
        import gevent
    except ImportError:
        return False
    return isinstance(exc, gevent.Timeout)


def _is_gevent_closed(exc: BaseException) -> bool:
    try:
        from geventhttpclient.response import HTTPConnectionClosed
    except ImportError:
        return False
    return isinstance(exc, HTTPConnectionClosed)


def _aiohttp_kind(exc: BaseException) -> ErrorKind | None:
    try:
        import aiohttp
    except ImportError:
        return None
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "unavailable"
    return None


def to_error(
    exc: BaseException, kind: ErrorKind, opts: ClientOptions, attempts: int
) -> ClientError:
    """The plantdx exception for a classified failure, with a message a user can act on."""
    where = f"{opts.url} ({opts.protocol})"
    msg = _message(exc)
    err: ClientError
    if kind == "invalid_image":
        match = _INVALID_IMAGE.search(msg)
        reason = match.group(1) if match else "not_an_image"
        err = InvalidImageError(reason, msg.removeprefix(f"in ensemble '{opts.model}', "))
    elif kind == "invalid_crop" and _NO_CROP_INPUT in msg:
        err = ClientError(
            f"{where} does not take a crop: its {opts.model} ensemble was exported before "
            "crops; export a version with this plantdx and restart the server (or send no crop)"
        )
    elif kind == "invalid_crop":
        err = ClientError(_clean(msg, opts))
    elif kind == "timeout":
        err = InferenceTimeoutError(f"no answer from {where} within {opts.timeout:g} s")
    elif kind == "unavailable":
        err = ServerUnavailableError(
            f"cannot reach plantdx at {where} after {attempts} attempt(s): {msg}"
        )
    elif kind == "overloaded":
        err = ServerOverloadedError(
            f"server overloaded: {_overload_reason(msg)}; retry later or add capacity "
            f"(plantdx at {opts.url} over {opts.protocol}, {attempts} attempt(s): "
            f"{_clean(msg, opts)})"
        )
    elif kind == "denied":
        err = ClientError(
            f"{where} refused the request ({msg}); pass the header it expects "
            "(headers={...}, or --header NAME=VALUE)"
        )
    elif kind == "tls":
        err = ClientError(f"TLS with {where} failed ({msg}); check ssl and root_certificates")
    else:
        err = ClientError(f"request to {where} failed: {msg}")
    err.kind = kind  # type: ignore[attr-defined]
    return err


def _overload_reason(msg: str) -> str:
    low = msg.lower()
    if _QUEUE_FULL in low:
        return "queue full"
    if _QUEUE_TIMEOUT in low:
        return "request timed out in the queue"
    return "too many requests"


def _clean(msg: str, opts: ClientOptions) -> str:
    """Triton's words without the ensemble prefix and the placeholder request id."""
    msg = msg.removeprefix(f"in ensemble '{opts.model}', ")
    return re.sub(r"^\[request id: <id_unknown>\] ", "", msg)


def error_kind(exc: BaseException) -> str:
    """The kind of a failure raised by a client call, for outcomes and reports."""
    if isinstance(exc, ClientError):
        return str(getattr(exc, "kind", "failed"))
    if isinstance(exc, OSError):
        return "io"
    return "failed"
