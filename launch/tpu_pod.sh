#!/usr/bin/env bash
# A Cloud TPU pod slice (several TPU VM hosts): the same command on every worker, one process
# per host driving its local chips; jax.distributed.initialize finds the coordinator, process
# count and id from the TPU metadata (distributed.mode=on).
#
#   TPU_NAME=my-pod ZONE=us-central2-b WORKDIR=/mnt/shared/runs/cs bash launch/tpu_pod.sh \
#       --config.data.tfds.data_dir=/mnt/shared/tfds
#
# Variables:
#   TPU_NAME   the TPU VM (pod slice) name                   (required)
#   ZONE       its zone                                      (required)
#   PROJECT    GCP project (default: gcloud's configured one)
#   CONFIG     config file and preset                        (default: configs/cityscapes.py:tfds)
#   WORKDIR    run folder on a filesystem every host mounts (NFS/Filestore, gcsfuse); the run
#              folder code uses local paths, so gs:// URLs are not accepted   (required)
#   REPO_DIR   where the repository is checked out on the hosts (default: ~/hmsa_jax)
# The repository and its environment must already be installed on every host
# (gcloud compute tpus tpu-vm ssh ... --worker=all --command="git clone ...; pip install -e .").
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
CONFIG=${CONFIG:-configs/cityscapes.py:tfds}
REPO_DIR=${REPO_DIR:-'~/hmsa_jax'}  # a leading ~/ is the worker's home
PROJECT_ARGS=()
if [[ -n ${PROJECT:-} ]]; then PROJECT_ARGS=(--project="$PROJECT"); fi

# Every value goes into the workers' shell command quoted (printf %q, read by their bash), so a
# value with spaces, ';' or '$(...)' stays one argument and never runs as a command.
quote_path() {
  if [[ $1 == "~/"* ]]; then printf '~/%q' "${1#"~/"}"; else printf '%q' "$1"; fi
}
REMOTE="cd $(quote_path "$REPO_DIR") && python -m hmsa_jax.cli train$(printf ' %q' \
  "--config=$CONFIG" "--workdir=$WORKDIR" --config.model.dtype=bfloat16 \
  --config.distributed.mode=on --config.distributed.initialization_timeout_s=600 "$@")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} \
  --worker=all --command="$REMOTE"
