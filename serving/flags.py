"""Reading a tritonserver command line: its flags, and what the launcher needs from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def parse_flags(argv: Sequence[str]) -> dict[str, list[str]]:
    """tritonserver's flags, `--name=value` or `--name value`, every value of each kept."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            out.setdefault(name, []).append(value)
        i += 1
    return out


def server_settings(flags: dict[str, list[str]]) -> dict[str, Any]:
    """`TritonServer` keyword arguments a command line implies (Triton's defaults otherwise)."""

    def last(name: str, default: str) -> str:
        return flags.get(name, [default])[-1]

    return {
        "repository": last("--model-repository", "."),
        "host": last("--http-address", "0.0.0.0"),
        "http_port": int(last("--http-port", "8000")),
        "grpc_port": int(last("--grpc-port", "8001")),
        "metrics_port": int(last("--metrics-port", "8002")),
        "model_control": last("--model-control-mode", "none"),
        "load_models": flags.get("--load-model", []),
        "exit_timeout_s": int(last("--exit-timeout-secs", "30")),
    }
