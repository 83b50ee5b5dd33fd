#!/usr/bin/env bash
# Kills prompt_tuning processes on every worker and frees the TPU for the next launch.
set -euo pipefail
USAGE="usage: tpu_scripts/kill.sh [--graceful] [common flags]

On every worker: kill the prompt_tuning python processes, then whatever still holds the TPU
(/dev/accel*, /dev/vfio/*), and remove /tmp/libtpu_lockfile. Run it before launching again
after a crash, or when a launch fails with 'TPU in use'.
  --graceful   send SIGTERM first and wait up to 5 minutes: the trainer saves a checkpoint
               and exits (as on preemption); then clean up as above"
SCRIPT_FLAGS='--graceful'
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"

# [g] keeps the pattern from matching the remote shell running this very command.
pattern='python.* -m prompt_tunin[g][.]'
stop="pkill -KILL -f '$pattern'"
if ((GRACEFUL)); then
  stop="pkill -TERM -f '$pattern'; for _ in \$(seq 300); do pgrep -f '$pattern' >/dev/null || break; sleep 1; done; $stop"
fi
tpu_ssh all "$stop; sleep 1; sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | xargs -r sudo kill -9; sudo rm -f /tmp/libtpu_lockfile; echo \"\$(hostname): TPU free\""
