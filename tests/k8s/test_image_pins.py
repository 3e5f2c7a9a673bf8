"""Images by digest (scripts/image_pins.py): every base image of docker/*.Dockerfile, every image
docker/compose.yaml pulls and every kustomization image carries `name:tag@sha256:<64 hex>`; the
placeholder digest (all zeros: not resolved where this was written) and a bare tag are
rejected by `check`; `pin` writes resolved digests in place, and the result still renders."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_pins", ROOT / "scripts" / "image_pins.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["image_pins"] = module
    spec.loader.exec_module(module)
    return module


pins = _load()
FAKE = "sha256:" + "ab" * 32


def test_every_image_is_pinned_by_digest_or_by_the_placeholder() -> None:
    refs = pins.all_refs()
    found = {r.image.split(":")[0].rsplit("/", 1)[-1] for r in refs}
    # The bases, the pulled compose services, the three deployed plantdx images.
    assert found == {
        "tritonserver", "python", "nginx", "prometheus", "grafana", "mlflow",
        "plantdx-serving", "plantdx-export", "plantdx-training",
    }  # fmt: skip
    for r in refs:
        assert r.digest == pins.PLACEHOLDER or pins.DIGEST.fullmatch(r.digest or ""), r
    # Whatever remains to be done is resolving placeholders, nothing else.
    assert all("placeholder" in p for p in pins.problems(refs)), pins.problems(refs)
    serving = next(r for r in refs if r.image.startswith("nvcr.io/nvidia/tritonserver:"))
    release = serving.image.split(":")[1].removesuffix("-py3")
    assert tuple(map(int, release.split("."))) >= (25, 7)  # NVIDIA's fixes of August 2025


def test_check_rejects_placeholders_bare_tags_and_latest(tmp_path: Path) -> None:
    refs = [
        pins.Ref(tmp_path / "a", 1, "nvcr.io/x/y:1.0", pins.PLACEHOLDER),
        pins.Ref(tmp_path / "a", 2, "nvcr.io/x/y:1.0", None),
        pins.Ref(tmp_path / "a", 3, "nvcr.io/x/y:latest", FAKE),
        pins.Ref(tmp_path / "a", 4, "nvcr.io/x/y", FAKE),
        pins.Ref(tmp_path / "a", 5, "nvcr.io/x/y:1.0", "sha256:abc"),
        pins.Ref(tmp_path / "a", 6, "nvcr.io/x/y:1.0", FAKE),
    ]
    found = pins.problems(refs)
    assert [p.split(":")[1] for p in found] == ["1", "2", "3", "4", "5"]
    assert "placeholder" in found[0] and "no digest" in found[1]


def test_the_script_exits_1_while_a_placeholder_is_left() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image_pins.py"), "check"],
        capture_output=True,
        text=True,
    )
    left = [r for r in pins.all_refs() if r.digest == pins.PLACEHOLDER]
    assert run.returncode == (1 if left else 0), run.stderr
    assert run.stderr.count("placeholder") == len(left)


def test_pin_writes_digests_that_render(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for d in ("docker", "k8s"):
        shutil.copytree(ROOT / d, root / d)
    asked: list[str] = []

    def resolve(image: str) -> str:
        asked.append(image)
        return FAKE

    before = pins.all_refs(root)
    pins.pin(before, resolve, every=True)
    after = pins.all_refs(root)
    assert len(after) == len(before) and sorted(asked) == sorted(r.image for r in before)
    assert all(r.digest == FAKE for r in after) and pins.problems(after) == []
    serving = (root / "docker" / "serving.Dockerfile").read_text()
    assert f"tritonserver:25.07-py3@{FAKE}\n" in serving
    compose = yaml.safe_load((root / "docker" / "compose.yaml").read_text())
    assert compose["services"]["gateway"]["image"].endswith(f"@{FAKE}")
    assert "@" not in compose["services"]["triton"]["image"]  # built here, from pinned bases
    pins.pin(after, resolve)  # nothing left to resolve: nothing asked
    assert len(asked) == len(before)
    if shutil.which("kubectl"):
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(root / "k8s" / "overlays" / "gpu")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"plantdx-serving:0.1.0-triton25.07@{FAKE}" in rendered


@pytest.mark.parametrize("resolver", ["buildx", "crane"])
def test_resolvers_read_the_digest(
    resolver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a stand-in `docker` / `crane` on PATH that prints what the real ones print."""
    out = {
        "buildx": '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'
        f'"digest":"{FAKE}","size":1}}',
        "crane": FAKE,
    }[resolver]
    tool = tmp_path / ("docker" if resolver == "buildx" else "crane")
    tool.write_text(f"#!/bin/sh\necho '{out}'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert pins.resolve_with(resolver)("nvcr.io/nvidia/tritonserver:25.07-py3") == FAKE
