#!/usr/bin/env bash
# Installs the repository into ~/prompt_tuning/.venv on every worker of the TPU.
set -euo pipefail
USAGE="usage: tpu_scripts/setup.sh [common flags]

On every worker: put the code in ~/prompt_tuning (a git archive of this checkout's HEAD, or a
clone of REPO_URL at REPO_BRANCH when REPO_URL is set), install PYTHON (python3.11) with apt
if missing, and pip install -e '.[tpu]' into ~/prompt_tuning/.venv. Safe to run again: it
updates the code and keeps the venv (and logs)."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require PROJECT ZONE TPU_NAME

if [[ -n $REPO_URL ]]; then
  shell_join "$REPO_URL"; url=$REPLY
  shell_join "$REPO_BRANCH"; branch=$REPLY
  get_code="if [ -d prompt_tuning/.git ]; then git -C prompt_tuning fetch -q $url $branch && git -C prompt_tuning checkout -q -B $branch FETCH_HEAD; else git clone -q -b $branch $url prompt_tuning; fi"
else
  if [[ -n $(git -C "$REPO_DIR" status --porcelain --untracked-files=no) ]]; then
    echo "warning: uncommitted changes are not copied; setup.sh copies HEAD" >&2
  fi
  tarball=$(mktemp -d)/prompt_tuning.tar.gz
  trap 'rm -rf "$(dirname "$tarball")"' EXIT
  run git -C "$REPO_DIR" archive --format=tar.gz --output="$tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:prompt_tuning.tar.gz" \
    --zone="$ZONE" --project="$PROJECT" --worker=all
  get_code="mkdir -p prompt_tuning && tar -xzf prompt_tuning.tar.gz -C prompt_tuning && rm prompt_tuning.tar.gz"
fi
install_python="command -v $PYTHON >/dev/null || { sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get install -y -q $PYTHON $PYTHON-venv; }"
tpu_ssh all "set -e; $install_python; $get_code; cd prompt_tuning && $PYTHON -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e '.[tpu]' && echo \"\$(hostname): ready\""
