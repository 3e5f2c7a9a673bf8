# syntax=docker/dockerfile:1
#
# plantdx serving image: NVIDIA Triton Inference Server 2.51 (NGC 24.10) plus what the
# `preprocess` and `postprocess` Python-backend models import (the plantdx package, for its
# preprocessing and decision rules; numpy<2, Pillow, OpenCV). The model repository is not baked
# in: it comes from the shared volume or from S3 at run time (k8s/), or from a bind mount
# (docker/compose.yaml).
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

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE} AS triton
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The Python backend runs the image's system python3 (3.10 in 24.10): install there.
RUN python3 -m pip install "numpy<2" "pillow>=10" "opencv-python-headless==4.11.0.86"

# ---------------------------------------------------------------------------------------------
FROM triton AS export
# Must be the TensorRT of the base image (NGC 24.10: TensorRT 10.5.0): the TensorRT build Job
# compares it with the base image's trtexec and refuses to build a plan if they differ.
# pyproject.toml's `gpu` extra pins the same release. `train`: export (torch, onnx).
ARG TENSORRT_VERSION=10.5.0
COPY . /src
RUN python3 -m pip install "/src[train]" "tensorrt-cu12==${TENSORRT_VERSION}" \
    && rm -rf /src
ENV PATH=/usr/src/tensorrt/bin:${PATH}
# uid 1000: the image's `triton-server` user.
USER 1000:1000
WORKDIR /tmp

# ---------------------------------------------------------------------------------------------
# Default target.
FROM triton AS serving
COPY . /src
# --no-deps: the backends need only the packages installed above, not PyTorch or MLflow.
RUN python3 -m pip install --no-deps /src \
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
