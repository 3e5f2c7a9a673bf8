# syntax=docker/dockerfile:1
#
# plantdx training image: `plantdx train` (single GPU) or `torchrun ... plantdx train` (DDP,
# k8s/jobs/training). The PyPI PyTorch wheels carry their own CUDA libraries, so the image
# needs only the NVIDIA driver of the host (NVIDIA Container Toolkit / GPU node).
#
#   docker build -f docker/training.Dockerfile -t plantdx-training:<version> .
#
# The build context is the repository root; docker/training.Dockerfile.dockerignore keeps
# virtual environments, runs and data out of it.
#
# Built from pins only: the base image by digest (a placeholder until `python3
# scripts/image_pins.py pin` resolves it where docker.io can be reached; `check` rejects it),
# every Python package from the hash-checked requirements/training.lock (`train` + `vit`, the
# same pins as dev.lock), plantdx itself from this source tree with no index.

FROM python:3.11.10-slim-bookworm@sha256:0000000000000000000000000000000000000000000000000000000000000000

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

# libgomp1: OpenMP runtime used by OpenCV and ONNX Runtime wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# train: fine-tuning, evaluation, export and MLflow; vit: --model vit.
COPY requirements/training.lock /tmp/training.lock
RUN python -m pip install --require-hashes --only-binary=:all: -r /tmp/training.lock \
    && rm /tmp/training.lock
COPY . /src
RUN python -m pip install --no-index --no-deps --no-build-isolation /src \
    && rm -rf /src \
    && python -c "import torch, torchvision, transformers, plantdx; print(torch.__version__)"

RUN groupadd --gid 1000 plantdx && useradd --uid 1000 --gid 1000 --no-create-home plantdx
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["plantdx"]
CMD ["train", "--help"]
