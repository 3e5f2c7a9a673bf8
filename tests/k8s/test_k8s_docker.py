"""Docker and CI files: no `latest` tag in any source file or base image, the compose file agrees
with the cluster, the Dockerfiles and the CI workflow. No image is built here."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from k8s_manifests import DOCKER, K8S, PORTS, ROOT, SUPERVISED, TRITON_ARGS, parse_args, triton
from k8s_policy import check_no_latest_anywhere, image_errors


def base_image_errors(dockerfile: str) -> list[str]:
    """FROM images (or the ARG defaults they use) must carry a tag other than latest."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, re.M))
    stages: set[str] = set()
    errors = []
    for image, alias in re.findall(
        r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.M | re.I
    ):
        if image not in stages:
            resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), "?"), image)
            errors += image_errors(resolved if "/" in resolved else f"docker.io/library/{resolved}")
        if alias:
            stages.add(alias)
    return errors


def test_no_latest_tag_in_any_source_file() -> None:
    files = [*K8S.rglob("*.yaml"), DOCKER / "compose.yaml"]
    errors = [f"{f}: {e}" for f in files for e in check_no_latest_anywhere(f.read_text())]
    for f in DOCKER.glob("*.Dockerfile"):
        errors += [f"{f}: {e}" for e in base_image_errors(f.read_text())]
    assert not errors, "\n".join(errors)
    assert base_image_errors("FROM python\n")
    assert base_image_errors("ARG B=nvcr.io/nvidia/tritonserver:latest\nFROM ${B} AS b\nFROM b\n")
    assert not base_image_errors("ARG B=nvcr.io/x/y:25.07\nFROM ${B} AS b\nFROM b AS c\n")


def test_compose_matches_the_cluster(renders: dict[str, list[dict[str, Any]]]) -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"triton", "prometheus", "grafana", "mlflow"} <= set(services)
    for name, svc in services.items():
        if "image" in svc:
            assert not image_errors(
                svc["image"] if "/" in svc["image"] else f"local/{svc['image']}"
            ), name
    triton_svc = services["triton"]
    assert triton_svc["command"][:5] == [*SUPERVISED, "tritonserver"]
    args = parse_args(triton_svc["command"][5:])
    assert args == dict(TRITON_ARGS, **{"--model-repository": "/models"})
    # The key: a secret file the supervisor reads, never on the command line.
    assert "plantdx-key" not in json.dumps(triton_svc)
    secret_file = triton_svc["environment"]["PLANTDX_ADMIN_KEY_FILE"]
    assert triton_svc["secrets"] == [secret_file.rsplit("/", 1)[1]]
    assert compose["secrets"]["plantdx_admin_key"] == {"environment": "PLANTDX_ADMIN_KEY"}
    assert triton_svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == [
        "gpu"
    ]
    assert triton_svc["shm_size"]
    assert triton_svc["read_only"] is True
    assert triton_svc["user"].startswith("1000")
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"triton:{PORTS['metrics']}"]
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    assert "./prometheus/plantdx.rules.yaml" in mounts
    assert "../k8s/monitoring/grafana-dashboard.json" in mounts
    for vol in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        src = vol.split(":")[0]
        if src.startswith("."):
            assert (DOCKER / src).resolve().exists(), vol


def _pip_installs(text: str) -> list[str]:
    """Every `pip install` command line of a Dockerfile, continuation lines joined."""
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    joined = re.sub(r"\\\n\s*", " ", code)
    return [m.group(0).strip() for m in re.finditer(r"pip install [^&\n]*", joined)]


def test_dockerfiles() -> None:
    serving = (DOCKER / "serving.Dockerfile").read_text()
    assert re.search(
        r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:25\.07-py3@sha256:[0-9a-f]{64}$",
        serving,
        re.M,
    )
    for f in DOCKER.glob("*.Dockerfile"):
        text = f.read_text()
        stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
        assert stages, f
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and all(u.split(":")[0] not in ("root", "0") for u in users), f
        assert (DOCKER / f"{f.name}.dockerignore").is_file(), f
        # Python packages only from hash-checked locks (copied from requirements/), plantdx
        # itself from the source tree with no index; TensorRT (NVIDIA's index) by exact version.
        installs = _pip_installs(text)
        assert installs, f
        for cmd in installs:
            lock = re.search(r"--require-hashes --only-binary=:all: -r /tmp/([\w-]+\.lock)$", cmd)
            if lock:
                assert f"COPY requirements/{lock.group(1)} /tmp/{lock.group(1)}" in text, cmd
                assert (ROOT / "requirements" / lock.group(1)).is_file(), cmd
            elif "--index-url https://pypi.nvidia.com" in cmd:
                assert f.name == "serving.Dockerfile" and "--no-deps" in cmd, cmd
                reqs = re.findall(r'"([\w-]+)==([^"]+)"', cmd)
                assert {n for n, _ in reqs} == {
                    "tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-cu12-bindings"
                }  # fmt: skip
                assert {v for _, v in reqs} == {"${TENSORRT_VERSION}"}, cmd
            else:
                assert cmd.split()[2:] == [
                    "--no-index",
                    "--no-deps",
                    "--no-build-isolation",
                    "/src",
                ]
    training = (DOCKER / "training.Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$", training, re.M)


def test_ci_workflow(renders: dict[str, list[dict[str, Any]]]) -> None:
    text = (ROOT / ".github" / "workflows" / "ci.yaml").read_text()
    wf = yaml.safe_load(text)
    assert {"lint-and-test", "serving-image"} <= set(wf["jobs"])
    build = wf["jobs"]["serving-image"]
    assert build["needs"] == "lint-and-test"
    steps = " ".join(json.dumps(s) for s in build["steps"])
    assert "docker/serving.Dockerfile" in steps
    assert "triton25.07" in steps
    assert "scripts/image_pins.py check --scope build" in steps  # before the build
    # The README's test command, as .ci/run runs it (it installs Debian's prometheus itself).
    assert "./dev.sh test" in json.dumps(wf["jobs"]["lint-and-test"])
    image = triton(renders["overlays/gpu"])["image"]
    assert re.fullmatch(r"\S+:\S+-triton25\.07@sha256:[0-9a-f]{64}", image), "the CI's tag"
