"""Server addresses: the host of a URL, and whether it is this machine's loopback.

The admin key may travel without TLS only to a loopback address (the server on this machine,
or a tunnel to one: `kubectl port-forward`, `ssh -L`); the server may listen off loopback only
with a key the operator chose. Only literal loopback addresses and `localhost` count: a name
that resolves to loopback today may not tomorrow.
"""

from __future__ import annotations

import ipaddress
import re

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
TLS_SCHEMES = ("https", "grpcs")


def scheme_of(url: str) -> str:
    """The URL's scheme in lower case ("" without one)."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


def host_of(url: str) -> str:
    """The host of `host:port`, `scheme://host:port/path` or `[v6]:port`, without brackets."""
    rest = _SCHEME.sub("", url, count=1).split("/", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if rest.count(":") == 1:
        return rest.split(":", 1)[0]
    return rest  # a bare host, or an IPv6 address without a port


def is_loopback(host: str) -> bool:
    """Whether `host` is a literal loopback address or `localhost`."""
    host = host.strip().rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_of(url: str) -> int | None:
    """The port of `host:port` or `scheme://host:port/...`; None without one."""
    rest = _SCHEME.sub("", url, count=1).split("/", 1)[0].rsplit("@", 1)[-1]
    tail = rest.rsplit("]", 1)[-1] if rest.startswith("[") else rest
    if tail.count(":") != 1:
        return None
    port = tail.rsplit(":", 1)[1]
    return int(port) if port.isdigit() else None
