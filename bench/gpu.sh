#!/usr/bin/env bash
# The GPU rows of bench/sae_step.py (issue 10) on a machine whose python3 already has CUDA JAX,
# torch, flax, optax, orbax and tensorstore (the device tool's H200 image) but no network.
#
#   bash bench/gpu.sh wheels   # here, with network: the missing pure-Python wheels into .whl/
#   bash bench/gpu.sh run      # there (carry .whl): install them to /tmp/site, run the GPU preset
#
# `run` prints the sae_step table (d 2304, 65,536 latents, k 64, batch 8192, bf16 compute with
# float32 master weights) for jaxinterp and sparsify (bf16 autocast + TF32, its CUDA defaults), the
# floor, and the fraction of the measured bf16 matmul rate the encoder matmul reaches; the JSON
# goes to ${OUT:-bench/results}/sae_step_gpu.json (PYTHON overrides python3). SAELens is not carried (its dependency tree is
# large), so its row says "not installed".
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(ml-collections==1.1.0 eai-sparsify==1.3.3 schedulefree==1.4.1 simple-parsing==0.1.7
        docstring-parser==0.17.0 natsort==8.4.0 datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18)
case "${1:-}" in
  wheels)
    mkdir -p .whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
    ls .whl ;;
  run)
    "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    PYTHONPATH="/tmp/site:$(pwd)" PYTHONUNBUFFERED=1 "${PYTHON:-python3}" bench/sae_step.py --preset gpu \
      --json "${OUT:-bench/results}/sae_step_gpu.json" "${@:2}" ;;
  *) sed -n 2,13p "$0"; exit 2 ;;
esac
