#!/usr/bin/env bash
# Starts a gin run in the background on every worker of the TPU (one process per host).
set -euo pipefail
USAGE="usage: tpu_scripts/launch.sh [--module MODULE] [common flags] [--] FLAGS...

Run 'python -m MODULE FLAGS...' with nohup on every worker, in ~/prompt_tuning (set up by
setup.sh), output to ~/prompt_tuning/train.log (MODULE's last part .log). FLAGS (everything
after --, and every argument this script does not know) reach python exactly as typed here,
quotes included, e.g.
  tpu_scripts/launch.sh -- --gin_file=models/t5_1_1_xxl.gin \\
    --gin_file=runs/prompt_finetune.gin --gin.MODEL_DIR=\"'gs://bucket/run'\"
On a pod each host joins the others by itself (jax.distributed). MODEL_DIR must be on gs://.
  --module MODULE   prompt_tuning.train (default), prompt_tuning.evaluate, prompt_tuning.infer"
SCRIPT_FLAGS='--module --'
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#EXTRA_ARGS[@]})) || die "no flags to pass to python -m $MODULE (see -h)"

shell_join "${EXTRA_ARGS[@]}"
log=${LOG_FILE#prompt_tuning/}
tpu_ssh all "cd prompt_tuning && nohup .venv/bin/python -m $MODULE $REPLY > $log 2>&1 < /dev/null & echo \"\$(hostname): started $MODULE, pid \$!, log ~/$LOG_FILE\""
