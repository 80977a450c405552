#!/usr/bin/env bash
# Prepare, on a machine with network, what benchmarks/gpu_check.py needs on a GPU machine that
# has Python 3.12 and torch but neither megatron-core nor network: the wheels (megatron-core
# 0.16.1 cp312 and the packages it and megatron-nitp import that such an image may lack) in
# benchmarks/gpu_wheels/, and the CPU reference of check (a) in benchmarks/gpu_check_ref/.
# Both are ignored by git; carry them to the GPU machine. Transformer Engine cannot come this
# way (it builds against the local CUDA): the check runs megatron's local layer specs.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/gpu_wheels
mkdir -p "$WHEELS"
pip download --dest "$WHEELS" --no-deps --only-binary=:all: --implementation cp \
    --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    megatron-core==0.16.1 numpy packaging pyyaml psutil
PYTHONPATH="$PWD" python benchmarks/gpu_check.py prepare --ref benchmarks/gpu_check_ref
ls -l "$WHEELS" benchmarks/gpu_check_ref
