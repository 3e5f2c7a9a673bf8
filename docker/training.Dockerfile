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

FROM python:3.11.10-slim-bookworm

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

COPY . /src
# train: fine-tuning, evaluation, export and MLflow; vit: --model vit.
RUN python -m pip install "/src[train,vit]" \
    && rm -rf /src \
    && python -c "import torch, torchvision, plantdx; print(torch.__version__)"

RUN groupadd --gid 1000 plantdx && useradd --uid 1000 --gid 1000 --no-create-home plantdx
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["plantdx"]
CMD ["train", "--help"]
