#!/usr/bin/env bash
# Run jaxinterp on every worker of a Cloud TPU VM pod slice (one process per worker host).
#
#   export TPU_NAME=my-v5e-64 ZONE=us-west4-a       # an existing TPU VM slice (gcloud compute tpus tpu-vm create ...)
#   bash launch/tpu_pod.sh setup                   # copy this checkout to every worker, install jax[tpu] + jaxinterp
#   bash launch/tpu_pod.sh run jaxinterp train --config configs/train.py \
#       --config.store=gs://BUCKET/stores/smollm2 --config.out=gs://BUCKET/runs/topk --config.streams=64
#
# `run` starts the same command on all workers (gcloud ... ssh --worker=all) with
# JAXINTERP_DISTRIBUTED=auto, so jaxinterp calls jax.distributed.initialize() and JAX finds the
# slice's coordinator and process ids itself. Stores on gs:// are read and written by TensorStore
# with the VM's service account; the run directory is a gs:// URL (orbax writes each worker's
# shards there; gcsfs from the cloud extra) or one path every worker sees (a Filestore NFS share). On a
# maintenance event or preemption each worker gets SIGTERM: all save a checkpoint at the same
# step and exit 0; rerun the same `run` line to resume (also onto a slice of another size, when
# --config.streams is a multiple of both worker counts).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR=${REMOTE_DIR:-jaxinterp}
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }
case "${1:-}" in
  setup)
    cd "$(dirname "$0")/.."
    gcloud compute tpus tpu-vm scp --zone "$ZONE" --worker=all --recurse \
      pyproject.toml README.md jaxinterp configs launch "$TPU_NAME":"$REMOTE_DIR"
    ssh_all "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
      && .venv/bin/pip install -q 'jax[tpu]==0.10.2' -e '.[data,cloud]'" ;;
  run)
    shift
    [ $# -gt 0 ] || { echo "usage: $0 run jaxinterp VERB [--config ...]" >&2; exit 2; }
    ssh_all "cd $REMOTE_DIR && JAXINTERP_DISTRIBUTED=auto .venv/bin/$(printf '%q ' "$@")" ;;
  *) sed -n 2,17p "$0"; exit 2 ;;
esac
