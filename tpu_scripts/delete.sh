#!/usr/bin/env bash
# Deletes the TPU VM TPU_NAME, or with --queued the queued resource QR_ID and its TPU.
set -euo pipefail
USAGE="usage: tpu_scripts/delete.sh [--queued] [common flags]

Delete the TPU VM (or pod slice) TPU_NAME without asking. Its disks go with it; MODEL_DIR on
gs:// stays.
  --queued   delete the queued resource QR_ID (default TPU_NAME) and the TPU it created"
SCRIPT_FLAGS='--queued'
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require PROJECT ZONE TPU_NAME

if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$QR_ID" --zone="$ZONE" --project="$PROJECT" \
    --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet
fi
