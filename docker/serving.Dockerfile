# syntax=docker/dockerfile:1
#
# plantdx serving image: NVIDIA Triton Inference Server from NGC release 25.07 (the first with
# NVIDIA's fixes of August 2025 for the HTTP chunked-encoding and Python-backend shared-memory
# vulnerabilities) plus what the `preprocess` and `postprocess` Python-backend models import
# (the plantdx package, for its preprocessing and decision rules; numpy<2, Pillow, OpenCV).
# The model repository is not baked in: it comes from the shared volume or from S3 at run time
# (k8s/), or from a bind mount (docker/compose.yaml).
#
# Built from pins only: the base image by digest, every Python package from a hash-checked
# lock (requirements/serving-image.lock, export-image.lock: `pip install --require-hashes`,
# wheels only), plantdx itself from this source tree with no index and no build isolation (its
# build backend, setuptools, comes from the same lock). The one exception is TensorRT in the
# `export` target (below). The digest below is a placeholder until `python3
# scripts/image_pins.py pin` resolves it on a machine that can reach nvcr.io (this repository
# was written where no registry could be reached); `scripts/image_pins.py check` (CI runs it
# before every build) rejects the placeholder.
#
#   docker build -f docker/serving.Dockerfile -t plantdx-serving:<model version> .
#
# Second target, `export`: the same NGC base with the full plantdx dependencies (PyTorch,
# ONNX, ONNX Runtime) and TensorRT's Python bindings, for `plantdx export --to tensorrt`
# (k8s/jobs/tensorrt-build). It shares the base image, so the plans it builds match the
# TensorRT that serves them.
#
#   docker build -f docker/serving.Dockerfile --target export -t plantdx-export:<version> .
#
# The build context is the repository root; docker/serving.Dockerfile.dockerignore keeps
# virtual environments, runs and data out of it.

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.07-py3@sha256:0000000000000000000000000000000000000000000000000000000000000000

FROM ${TRITON_IMAGE} AS triton
# Ubuntu 24.04 marks its Python as externally managed; this image is the environment.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The Python backend runs the image's system python3 (3.12 in 25.07): install there, from the
# lock made for it (requirements/compile.sh).
COPY requirements/serving-image.lock /tmp/serving-image.lock
RUN python3 -m pip install --require-hashes --only-binary=:all: -r /tmp/serving-image.lock \
    && rm /tmp/serving-image.lock

# ---------------------------------------------------------------------------------------------
FROM triton AS export
# `train` (export: torch, onnx, onnxruntime) for Python 3.12, hash-checked like the rest.
COPY requirements/export-image.lock /tmp/export-image.lock
RUN python3 -m pip install --require-hashes --only-binary=:all: -r /tmp/export-image.lock \
    && rm /tmp/export-image.lock
COPY . /src
RUN python3 -m pip install --no-index --no-deps --no-build-isolation /src && rm -rf /src
# Must be the TensorRT of the base image (NGC 25.07: TensorRT 10.11.0.33): the TensorRT build
# Job compares it with the base image's trtexec and refuses to build a plan if they differ.
# pyproject.toml's `gpu` extra pins the same release. Not hash-checked: its wheels are on
# NVIDIA's own index, which could not be reached where the locks were made; pinned by exact
# version (all three distributions, no dependency resolution), from that index only.
ARG TENSORRT_VERSION=10.11.0.33
RUN python3 -m pip install --no-deps --index-url https://pypi.nvidia.com \
        "tensorrt-cu12==${TENSORRT_VERSION}" "tensorrt-cu12-libs==${TENSORRT_VERSION}" \
        "tensorrt-cu12-bindings==${TENSORRT_VERSION}" \
    && python3 -c "import tensorrt, sys; sys.exit(tensorrt.__version__ != '${TENSORRT_VERSION}')"
ENV PATH=/usr/src/tensorrt/bin:${PATH}
# uid 1000: the image's `triton-server` user.
USER 1000:1000
WORKDIR /tmp

# ---------------------------------------------------------------------------------------------
# Default target.
FROM triton AS serving
COPY . /src
# No index, no dependencies: the backends need only the locked packages installed above, not
# PyTorch or MLflow; nothing is fetched here.
RUN python3 -m pip install --no-index --no-deps --no-build-isolation /src \
    && rm -rf /src \
    && python3 -c "import numpy, PIL, cv2, plantdx.preprocessing, plantdx.decision"
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000 8001 8002
# The Kubernetes Deployment and docker/compose.yaml give the full command line. The supervisor
# (serving/supervise.py) restarts dead Python-backend stubs and drains on SIGTERM.
CMD ["python3", "-m", "plantdx.serving.supervise", "--", "tritonserver", \
     "--model-repository=/models", "--model-control-mode=explicit", "--load-model=plantdx", \
     "--strict-readiness=true", "--allow-metrics=true", "--allow-gpu-metrics=true", \
     "--metrics-config=summary_latencies=true", "--cache-config=local,size=268435456"]
