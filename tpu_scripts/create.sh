#!/usr/bin/env bash
# Creates the TPU VM or pod slice TPU_NAME: on demand, as spot, or through a queued resource.
set -euo pipefail
USAGE="usage: tpu_scripts/create.sh [--spot] [--queued] [common flags]

Create the TPU VM (or pod slice) TPU_NAME of ACCELERATOR_TYPE with RUNTIME_VERSION.
  --spot     spot capacity: cheaper, may be preempted at any time
  --queued   request it as a queued resource (id QR_ID, default TPU_NAME) that waits for
             capacity; watch it with: gcloud compute tpus queued-resources list --zone=ZONE"
SCRIPT_FLAGS='--spot --queued'
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION

spot=()
if ((SPOT)); then spot=(--spot); fi
if ((QUEUED)); then
  run gcloud compute tpus queued-resources create "$QR_ID" --node-id="$TPU_NAME" \
    --zone="$ZONE" --project="$PROJECT" --accelerator-type="$ACCELERATOR_TYPE" \
    --runtime-version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
fi
