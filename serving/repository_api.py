"""Triton's model-repository API over plain HTTP (standard library only: the serving image has
no tritonclient), with the admin key as a header that is never logged. What the launcher and the
container supervisor need: the index, a model's config, load (optionally with a config), unload.
`control.ModelControl` is the CLI's client for the same API over HTTP or gRPC. It talks only to
the server this process started (on this machine), so the key goes over plain HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from plantdx.model_repository.names import ADMIN_HEADER

# What a failed call raises: the server is down, refused or answered garbage.
CallError = (urllib.error.URLError, OSError, ValueError)


class RepositoryApi:
    def __init__(self, http_url: str, admin_key: str | None = None, timeout_s: float = 10.0):
        self.http_url = http_url
        self._admin_key = admin_key
        self.timeout_s = timeout_s

    def _headers(self) -> dict[str, str]:
        return {ADMIN_HEADER: self._admin_key} if self._admin_key else {}

    def call(self, path: str, body: dict[str, object] | None = None) -> object:
        """POST to /v2/repository{path}; the parsed answer (None when empty)."""
        req = urllib.request.Request(
            f"http://{self.http_url}/v2/repository{path}",
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json", **self._headers()},
        )
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def index(self) -> list[dict[str, Any]]:
        found = self.call("/index")
        return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []

    def ready_versions(self) -> set[tuple[str, str]]:
        """(model, version) of every READY model version."""
        return {
            (str(m.get("name")), str(m.get("version")))
            for m in self.index()
            if m.get("state") == "READY"
        }

    def config(self, model: str) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://{self.http_url}/v2/models/{model}/config", headers=self._headers()
        )
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            cfg = json.loads(resp.read())
        return cfg if isinstance(cfg, dict) else {}

    def load(self, model: str, config: dict[str, Any] | None = None) -> None:
        body: dict[str, object] | None = (
            {"parameters": {"config": json.dumps(config)}} if config is not None else None
        )
        self.call(f"/models/{model}/load", body)

    def unload(self, model: str) -> None:
        self.call(f"/models/{model}/unload")
