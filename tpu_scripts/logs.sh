#!/usr/bin/env bash
# Follows the log of the run started by launch.sh on one worker (default 0) or all.
set -euo pipefail
USAGE="usage: tpu_scripts/logs.sh [--worker N|all] [--module MODULE] [common flags]

Follow (tail -F) ~/prompt_tuning/train.log, the log launch.sh writes, on a worker. Ctrl-C stops
following; the run goes on.
  --worker N|all    which worker (default 0; the others log the same steps)
  --module MODULE   the module launched (default prompt_tuning.train; the log is named after it)"
SCRIPT_FLAGS='--worker --module'
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"

tpu_ssh "${WORKER:-0}" "tail -n 200 -F $LOG_FILE"
