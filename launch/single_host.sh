#!/usr/bin/env bash
# One host, all its devices (CPU, one or more GPUs, or a single TPU VM): one process.
# Re-running the same command resumes from the newest complete checkpoint in WORKDIR.
#
#   CONFIG   config file and preset        (default: configs/scale_bench.py)
#   WORKDIR  run folder                    (default: runs/demo)
#   extra arguments are passed on, e.g. --config.data.root=~/data/cityscapes
#
# Exit status 75: stopped by SIGTERM/SIGINT after saving; run again to resume.
set -euo pipefail
CONFIG=${CONFIG:-configs/scale_bench.py}
WORKDIR=${WORKDIR:-runs/demo}
cd "$(dirname "$0")/.."
exec python -m hmsa_jax.cli train --config="$CONFIG" --workdir="$WORKDIR" \
    --config.distributed.mode=off "$@"
