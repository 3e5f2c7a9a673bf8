#!/usr/bin/env bash
# Re-resolve the lock files from pyproject.toml's ranges (Python 3.11, Linux x86_64 with glibc 2.35 or newer, as the Triton wheel needs), keeping
# every pin that still fits; the images' locks (Python 3.12 for the NGC Triton image) take dev.lock's pins. Needs uv (pip install uv) and PyPI; installs nothing.
#   requirements/compile.sh                      keep the pins that still satisfy pyproject.toml
#   requirements/compile.sh --upgrade-package X  move X (and what it needs) to its newest release
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-uv}"
compile() {  # compile OUT EXTRA [uv options]
    local out=$1 extra=$2
    shift 2
    "$UV" pip compile pyproject.toml --extra "$extra" --python-version 3.11 \
        --python-platform x86_64-manylinux_2_35 --generate-hashes --no-strip-extras \
        --custom-compile-command "requirements/compile.sh" --quiet -o "$out" "$@"
}
# The NGC Triton image's system Python: 3.12 on Ubuntu 24.04 (glibc 2.39) in tritonserver 25.07.
image312() {  # image312 OUT SOURCE [uv options]
    local out=$1 source=$2
    shift 2
    "$UV" pip compile "$source" --python-version 3.12 --python-platform x86_64-manylinux_2_39 \
        --only-binary :all: --generate-hashes --no-strip-extras -c requirements/dev.lock \
        --custom-compile-command "requirements/compile.sh" --quiet -o "$out" "$@"
}
# dev: everything, the set the tests run against; the others are subsets of its pins.
compile requirements/dev.lock dev "$@"
compile requirements/demo.lock train -c requirements/dev.lock --extra serve
compile requirements/client.lock client -c requirements/dev.lock
# The images (docker/): training (train + vit), the serving image's backends, its export target.
compile requirements/training.lock train -c requirements/dev.lock --extra vit --only-binary :all:
image312 requirements/serving-image.lock requirements/serving-image.in
image312 requirements/export-image.lock pyproject.toml --extra train
