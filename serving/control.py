"""Model control on a running server through Triton's repository API (explicit mode).

`load` follows the repository: the classifier first, so a broken new version fails to load
while the old pair keeps serving, then the preprocessing of the same version. `load
--version N` pins preprocess and classifier to version N with a config override (rollback);
the pin lasts until the next plain `load` or a restart. The API is restricted by a key sent
as a header; the key is never printed, logged or put into an error message. Without a key, the
one a server on this machine made for its port is used (serving/admin_key.py). The key travels
without TLS only to a loopback address: `https://` (or `grpcs://`) turns TLS on, and any other
host is refused, before anything is sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from plantdx.addresses import TLS_SCHEMES, host_of, is_loopback, port_of, scheme_of
from plantdx.choices import Protocol
from plantdx.exceptions import ClientError
from plantdx.model_repository.names import (
    ADMIN_HEADER,
    CLASSIFIER,
    ENSEMBLE,
    EXPLAIN_ENSEMBLE,
    PREPROCESS,
)
from plantdx.model_repository.policy import FOLLOWERS

from .admin_key import find_key

GRPC_KEY_PREFIX = "triton-grpc-protocol-"  # how Triton's gRPC frontend spells custom headers
VERSIONED = (CLASSIFIER, PREPROCESS)  # published together as version N


@dataclass
class ModelState:
    name: str
    version: str
    state: str
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
        }


class ModelControl:
    """load / unload / status of one server's models; raises ClientError with Triton's words."""

    def __init__(
        self,
        url: str = "127.0.0.1:8000",
        *,
        protocol: Protocol = "http",
        key: str | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.ssl = scheme_of(url) in TLS_SCHEMES
        self.url = url.split("://", 1)[-1].rstrip("/")  # tritonclient wants host:port
        self.protocol = protocol
        host = host_of(self.url)
        if key is None and is_loopback(host):
            key = find_key(port_of(self.url))
        if key and not self.ssl and not is_loopback(host):
            raise ClientError(
                f"refusing to send the admin key to {host} without TLS: use https:// (the "
                "server behind a TLS proxy) or a tunnel to a loopback address (kubectl "
                "port-forward, ssh -L) and --url 127.0.0.1:PORT"
            )
        self._key = key
        self.timeout_s = timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self._client: Any = grpcclient.InferenceServerClient(self.url, ssl=self.ssl)
        else:
            import tritonclient.http as httpclient

            self._client = httpclient.InferenceServerClient(
                self.url,
                connection_timeout=timeout_s,
                network_timeout=timeout_s,
                ssl=self.ssl,
            )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ModelControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _headers(self) -> dict[str, str] | None:
        if not self._key:
            return None
        name = GRPC_KEY_PREFIX + ADMIN_HEADER if self.protocol == "grpc" else ADMIN_HEADER
        return {name: self._key}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout_s)
        try:
            return fn(*args, headers=self._headers(), **kwargs)
        except Exception as exc:
            raise ClientError(f"{what} failed on {self.url}: {self._clean(exc)}") from None

    def _clean(self, exc: Exception) -> str:
        text = str(exc).strip()
        # Python-backend load errors carry a traceback after "At:"; the first lines say it all.
        text = text.split("\n\nAt:")[0].strip()
        if self._key:
            text = text.replace(self._key, "***")
        if "restricted" in text:
            text += (
                " (set the key in the environment variable named by --admin-key-env; a server "
                "started without one keeps its key in the file `plantdx serve` printed)"
            )
        return text

    # -- the commands ------------------------------------------------------------------------
    def status(self) -> list[ModelState]:
        if self.protocol == "grpc":
            index = self._call(
                "reading the model repository index",
                self._client.get_model_repository_index,
                as_json=True,
            ).get("models", [])
        else:
            index = self._call(
                "reading the model repository index", self._client.get_model_repository_index
            )
        rows = [
            ModelState(
                m.get("name", ""),
                str(m.get("version", "")),
                m.get("state", "") or "UNAVAILABLE",
                (m.get("reason", "") or "").split("\n\nAt:")[0].strip(),
            )
            for m in index
        ]
        return sorted(rows, key=lambda r: (r.name, int(r.version) if r.version.isdigit() else 0))

    def config(self, model: str) -> dict[str, Any]:
        if self.protocol == "grpc":
            cfg = self._call(
                f"reading the config of {model}",
                self._client.get_model_config,
                model,
                as_json=True,
            )
            return dict(cfg["config"])
        return dict(
            self._call(f"reading the config of {model}", self._client.get_model_config, model)
        )

    def _load(self, model: str, config: dict[str, Any] | None = None, what: str = "") -> None:
        kwargs = {"config": json.dumps(config)} if config is not None else {}
        self._call(what or f"loading {model}", self._client.load_model, model, **kwargs)

    def load_config(self, model: str, config: dict[str, Any] | None, what: str = "") -> None:
        """Load `model` with `config` replacing its config.pbtxt (None: the repository's), until
        the next plain load or a restart; the loaded versions serve until the new ones are ready."""
        self._load(model, config, what)

    def ready_versions(self, model: str) -> list[int]:
        """The versions of `model` that are READY now, ascending."""
        return sorted(
            int(s.version)
            for s in self.status()
            if s.name == model and s.state == "READY" and s.version.isdigit()
        )

    def served_version(self) -> int | None:
        """The classifier version the `plantdx` ensemble runs: the version its step names,
        else the newest ready (None: nothing is ready)."""
        try:
            steps = self.config(ENSEMBLE).get("ensemble_scheduling", {}).get("step", [])
        except ClientError:
            return None
        for step in steps:
            if step.get("model_name") == CLASSIFIER and int(step.get("model_version", -1)) >= 0:
                return int(step["model_version"])
        ready = self.ready_versions(CLASSIFIER)
        return ready[-1] if ready else None

    def load(self, model: str = ENSEMBLE, *, version: int | None = None) -> list[str]:
        """Load (or reload) `model`; for the ensemble, its versioned models in a safe order.

        Returns what was done, one line per step."""
        if version is not None:
            return self.pin(version, model)
        if model != ENSEMBLE:
            self._load(model)
            return [f"loaded {model} (versions as its config's version policy says)"]
        steps = []
        for name in VERSIONED:  # the classifier first: if it breaks, nothing has changed
            self._load(name)
            steps.append(f"loaded {name} {self._ready_versions(name)}")
        if not self._client.is_model_ready(ENSEMBLE):
            self._load(ENSEMBLE)
            steps.append(f"loaded {ENSEMBLE}")
        present = {s.name for s in self.status()}
        for name in (*(m for m in FOLLOWERS if m in present), EXPLAIN_ENSEMBLE):
            if name in present:  # explanations, when published; a failure leaves plantdx as is
                steps.append(self._load_explanations(name))
        return steps

    def _load_explanations(self, name: str, config: dict[str, Any] | None = None) -> str:
        try:
            self._load(name, config)
        except ClientError as exc:
            return f"{name} did not load (no explanations): {exc}"
        return f"loaded {name} {self._ready_versions(name)}"

    def pin(self, version: int, model: str = ENSEMBLE) -> list[str]:
        """Serve exactly `version` of preprocess and classifier (rollback), without a restart."""
        if model not in (ENSEMBLE, *VERSIONED):
            raise ClientError(f"{model} has a single version; pin the ensemble {ENSEMBLE!r}")
        names = VERSIONED if model == ENSEMBLE else (model,)
        steps = []
        for name in names:
            try:
                cfg = self.config(name)
            except ClientError as exc:
                raise ClientError(f"{exc}; load {name} once before pinning a version") from None
            cfg["version_policy"] = {"specific": {"versions": [int(version)]}}
            self._load(name, cfg, what=f"pinning {name} to version {version}")
            steps.append(f"pinned {name} to version {version}")
        if model == ENSEMBLE and not self._client.is_model_ready(ENSEMBLE):
            self._load(ENSEMBLE)
            steps.append(f"loaded {ENSEMBLE}")
        if model == ENSEMBLE:  # the explanations' classifier follows, when there is one
            present = {s.name for s in self.status()}
            for name in (m for m in FOLLOWERS if m in present):
                try:
                    cfg = self.config(name)
                except ClientError:
                    continue  # never loaded: nothing serves explanations to pin
                cfg["version_policy"] = {"specific": {"versions": [int(version)]}}
                steps.append(self._load_explanations(name, cfg))
        return steps

    def unload(self, model: str = ENSEMBLE, *, dependents: bool = False) -> list[str]:
        self._call(
            f"unloading {model}", self._client.unload_model, model, unload_dependents=dependents
        )
        return [f"unloaded {model}" + (" and the models it uses" if dependents else "")]

    def _ready_versions(self, model: str) -> str:
        ready = [s.version for s in self.status() if s.name == model and s.state == "READY"]
        return "version " + ", ".join(ready) if ready else "(no version ready)"
