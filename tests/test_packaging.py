"""Packaging: the lock files cover pyproject.toml, the build prints no warnings and ships the
Triton backends and configs, and `plantdx[client]` alone (no torch) classifies photos."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = ROOT / "requirements"
# Which extras each lock file installs (dev.sh: test -> dev, demo -> demo; the images:
# docker/training.Dockerfile -> training, docker/serving.Dockerfile's export target ->
# export-image, for the NGC Triton image's Python 3.12).
LOCK_EXTRAS = {
    "dev": ["dev"],
    "demo": ["serve", "train"],
    "client": ["client"],
    "training": ["train", "vit"],
    "export-image": ["train"],
}
# Locks of the images, made for another Python than dev.lock's but with its pins.
IMAGE_LOCKS = ("training", "export-image", "serving-image")
# Never resolved here (TensorRT's wheels fetch from NVIDIA's own index): no lock holds them.
UNLOCKED_EXTRAS = {"gpu"}
# Distributions that must stay out of a client install.
HEAVY = {"torch", "torchvision", "mlflow", "onnxruntime", "nvidia-pytriton", "transformers"}


def requirements(extras: list[str]) -> list[Requirement]:
    """The base dependencies and the extras' requirements, with plantdx[...] expanded."""
    project = PYPROJECT["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "plantdx":
                todo.extend(req.extras)
            else:
                found.append(req)
    return found


def pins(lock: str) -> dict[str, Version]:
    text = (LOCKS / f"{lock}.lock").read_text()
    out = {}
    for m in re.finditer(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", text, re.M):
        out[canonicalize_name(m.group(1))] = Version(m.group(2))
    return out


def test_every_extra_is_locked_or_named_as_unlocked() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    covered = {e for lock in LOCK_EXTRAS.values() for e in lock}
    covered |= {
        e
        for e in extras
        if any(
            canonicalize_name(Requirement(r).name) == "plantdx" and e in Requirement(r).extras
            for r in PYPROJECT["project"]["optional-dependencies"]["dev"]
        )
    }
    assert extras - covered == UNLOCKED_EXTRAS


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_lock_pins_every_declared_dependency_within_its_range(lock: str) -> None:
    pinned = pins(lock)
    assert len(pinned) > 10
    missing, outside = [], []
    for req in requirements(LOCK_EXTRAS[lock]):
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue
        version = pinned.get(canonicalize_name(req.name))
        if version is None:
            missing.append(str(req))
        elif not req.specifier.contains(version, prereleases=True):
            outside.append(f"{req} (locked {version})")
    assert not missing, f"requirements/{lock}.lock lacks {missing}: run requirements/compile.sh"
    assert not outside, f"requirements/{lock}.lock is outside pyproject.toml: {outside}"


def test_locks_are_subsets_of_the_dev_lock_and_the_client_has_no_torch() -> None:
    dev = pins("dev")
    for lock in ("demo", "client", *IMAGE_LOCKS):
        differ = {n: v for n, v in pins(lock).items() if dev.get(n) != v}
        assert not differ, f"requirements/{lock}.lock pins differ from dev.lock: {differ}"
    assert not HEAVY & set(pins("client"))
    assert {"torch", "nvidia-pytriton", "onnxruntime"} <= set(pins("demo"))
    # Every pin is hash-checked (dev.sh and the Dockerfiles install with --require-hashes).
    for lock in (*LOCK_EXTRAS, "serving-image"):
        entries = re.findall(
            r"^\S+==\S+(.*?)(?=^\S|\Z)", (LOCKS / f"{lock}.lock").read_text(), re.M | re.S
        )
        assert entries and all("--hash=sha256:" in e for e in entries)


# -- the build ----------------------------------------------------------------------------------
def source_copy(dest: Path) -> Path:
    """pyproject.toml, README and the package directories, as a clean source tree."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dirs = {d.split("/")[0] for d in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    for d in dirs:
        shutil.copytree(ROOT / d, dest / d, ignore=ignore)
    return dest


BUILD = """
import sys, warnings
from setuptools import build_meta
warnings.simplefilter("always")
out = sys.argv[1]
print("WHEEL", build_meta.build_wheel(out))
print("EDITABLE", build_meta.build_editable(out))
"""


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel (and editable wheel) built by setuptools from a clean copy, and its log."""
    src = source_copy(tmp_path_factory.mktemp("build") / "src")
    out = src.parent / "dist"
    out.mkdir()
    r = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        # Byte-compiling on, as on a user's machine (else distutils says it skips it).
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    name = re.search(r"^WHEEL (\S+)$", r.stdout, re.M)
    assert name is not None, r.stdout
    return out / name.group(1), r.stdout + r.stderr


def test_build_prints_no_warnings(built_wheel: tuple[Path, str]) -> None:
    _, log = built_wheel
    warned = [line for line in log.splitlines() if re.search(r"warn", line, re.I)]
    assert not warned, "\n".join(warned)


def test_wheel_ships_the_backends_and_configs(built_wheel: tuple[Path, str]) -> None:
    wheel, _ = built_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    backends = {Path(n).name for n in names if n.startswith("plantdx/model_repository/backends/")}
    assert {"preprocess.py", "classifier_onnx.py", "postprocess.py", "heatmap.py"} <= backends
    assert "plantdx/configs/default.yaml" in names and "plantdx/py.typed" in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    requires = [
        line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("Requires-Dist: ")
    ]
    base = [r for r in requires if "extra ==" not in r]
    assert not {canonicalize_name(Requirement(r).name) for r in base} & HEAVY, base


# -- a client-only install ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory, built_wheel: tuple[Path, str]) -> Path:
    """A fresh venv (no system site-packages) with requirements/client.lock and the wheel."""
    env_dir = tmp_path_factory.mktemp("client") / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    for args in (
        ["--require-hashes", "-r", str(LOCKS / "client.lock")],
        ["--no-deps", str(built_wheel[0])],
    ):
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    return env_dir


LIST = """
import importlib.metadata as md, json
print(json.dumps(sorted({d.metadata["Name"].lower() for d in md.distributions()})))
"""


@pytest.mark.slow
def test_client_install_has_no_torch_and_its_cli_runs(client_venv: Path) -> None:
    py = client_venv / "bin" / "python"
    names = json.loads(subprocess.check_output([str(py), "-c", LIST], text=True))
    assert "plantdx" in names and "tritonclient" in names
    assert not HEAVY & {canonicalize_name(n) for n in names}, names
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(
        [str(client_venv / "bin" / "plantdx"), "predict", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "--protocol" in r.stdout
    # The package imported is the installed one, not this checkout.
    where = subprocess.check_output(
        [str(py), "-c", "import plantdx.client, plantdx; print(plantdx.__file__)"],
        text=True,
        env=env,
        cwd=client_venv,
    )
    assert str(client_venv) in where


@pytest.mark.slow
@pytest.mark.triton
def test_client_install_classifies_against_a_running_server(
    client_venv: Path, triton_server, mini_photos: list[Path]
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for url, protocol in (
        (triton_server.http_url, "http"),
        (triton_server.grpc_url, "grpc"),
    ):
        r = subprocess.run(
            [
                str(client_venv / "bin" / "plantdx"),
                "predict",
                "--url",
                url,
                "--protocol",
                protocol,
                "--json",
                *map(str, mini_photos[:2]),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=client_venv,
        )
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert len(rows) == 2 and all(row["label"] for row in rows), rows


def test_gpu_extra_pins_the_tensorrt_of_the_serving_image() -> None:
    """A plan loads only in the TensorRT that built it: the extra, the export image and the
    NGC Triton image of docker/serving.Dockerfile (25.07: TensorRT 10.11.0.33, the release of
    NVIDIA's CUDA 12.9.1 stack of 25.06/25.07) agree."""
    dockerfile = (ROOT / "docker" / "serving.Dockerfile").read_text()
    image = re.search(
        r"^ARG TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:(\S+)-py3@sha256:[0-9a-f]{64}$",
        dockerfile,
        re.M,
    )
    version = re.search(r"^ARG TENSORRT_VERSION=(\S+)$", dockerfile, re.M)
    assert image and version and '"tensorrt-cu12==${TENSORRT_VERSION}"' in dockerfile
    assert {"25.07": "10.11.0.33"}.get(image.group(1)) == version.group(1), "update this table"
    gpu = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    assert [(r.name, str(r.specifier)) for r in gpu] == [("tensorrt-cu12", f"=={version.group(1)}")]
    assert not {canonicalize_name(r.name) for r in gpu} & {"onnxruntime-gpu", "onnxruntime"}


def test_the_serving_image_lock_has_what_the_backends_import() -> None:
    """numpy below 2 (the stub), the OpenCV of pyproject.toml, setuptools to build plantdx."""
    locked = pins("serving-image")
    assert set(locked) == {"numpy", "pillow", "opencv-python-headless", "setuptools"}
    assert locked["numpy"] < Version("2")
    train = {r.name: r for r in requirements(["train"])}
    assert train["opencv-python-headless"].specifier.contains(locked["opencv-python-headless"])
    for req in PYPROJECT["build-system"]["requires"]:
        r = Requirement(req)
        if canonicalize_name(r.name) == "setuptools":
            assert r.specifier.contains(locked["setuptools"])
