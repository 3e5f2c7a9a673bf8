"""The capture components (k8s/components/capture-volume, capture-s3): off by default, and when
an overlay adds one, the rendered objects validate strictly, keep every serving policy of
tests/k8s/k8s_policy.py, and carry capture settings the supervisor accepts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from plantdx.capture.settings import CaptureSettings

from k8s_manifests import DEPLOYMENT, K8S, KUBERNETES_VERSION, find, kustomize, ref, triton
from k8s_policy import SERVING_CHECKS

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def _with(component: str, tmp_path: Path, base: str = "cpu") -> list[dict[str, Any]]:
    """The `base` overlay with the component, rendered from a folder of its own."""
    overlay = tmp_path / component
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(K8S / 'overlays' / base, overlay)}\n"
        f"components:\n  - {os.path.relpath(K8S / 'components' / component, overlay)}\n"
    )
    return kustomize(overlay)


def _env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in triton(objs).get("env", [])}


def _strict(objs: list[dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    errors = []
    for obj in objs:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue
        try:
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{ref(obj)}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def _policies(objs: list[dict[str, Any]]) -> None:
    errors = [f"{name}: {e}" for name, check in SERVING_CHECKS.items() for e in check(objs)]
    assert not errors, "\n".join(errors)


def _settings(env: dict[str, Any]) -> CaptureSettings:
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    settings = CaptureSettings.from_env(plain)  # what the supervisor checks before Triton
    assert settings is not None
    return settings


def test_capture_is_off_by_default() -> None:
    for overlay in ("cpu", "gpu", "gpu-s3"):
        assert "PLANTDX_CAPTURE" not in _env(kustomize(K8S / "overlays" / overlay)), overlay


def test_capture_on_a_volume(tmp_path: Path) -> None:
    objs = _with("capture-volume", tmp_path)
    _strict(objs)
    _policies(objs)
    env = _env(objs)
    assert env["PLANTDX_CAPTURE"] == "/capture"
    settings = _settings(env)
    assert settings.strip_exif and 0 < settings.rate <= 1
    c = triton(objs)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/capture")
    assert not mount.get("readOnly"), "every pod writes its captures"
    dep = find(objs, "Deployment", DEPLOYMENT)
    volume = next(
        v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    claim = find(objs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["metadata"]["namespace"] == dep["metadata"]["namespace"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "several pods write at once"


def test_capture_into_s3(tmp_path: Path) -> None:
    objs = _with("capture-s3", tmp_path)
    _strict(objs)
    _policies(objs)
    env = _env(objs)
    assert str(env["PLANTDX_CAPTURE"]).startswith("s3://")
    assert _settings(env).destination.startswith("s3://")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        source = env[name]
        assert isinstance(source, dict), f"{name} is written in the manifest: {json.dumps(source)}"
        assert source["secretKeyRef"]["name"] == "plantdx-capture-s3"
    assert not any(m["mountPath"] == "/capture" for m in triton(objs)["volumeMounts"])
