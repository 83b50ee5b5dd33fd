# shellcheck shell=bash
# Shared by the tpu_scripts: config loading, flag parsing, `run` (or print under --dry-run) and
# the gcloud ssh call. Sourced, never run. A script sets USAGE (its help text) and SCRIPT_FLAGS
# (the script's own flags, space separated; "--" lets unknown arguments through to EXTRA_ARGS)
# before sourcing this file, then calls `parse_flags "$@"` and `require KEY ...`.
# Written for bash 3.2 (macOS) too: no associative arrays, no ${x@Q}, guarded empty arrays.
# shellcheck disable=SC2034  # the globals set here (SPOT, WORKER, ...) are read by the scripts

TPU_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$TPU_SCRIPTS_DIR")
CONFIG_KEYS='PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION BUCKET REPO_URL REPO_BRANCH PYTHON QR_ID'

COMMON_HELP="
Common flags (each overrides the key of the same name in the config file):
  --config FILE             config file (default: tpu_scripts/config.sh)
  --project ID              PROJECT
  --zone ZONE               ZONE
  --tpu-name NAME           TPU_NAME
  --accelerator-type TYPE   ACCELERATOR_TYPE, e.g. v3-32, v4-32
  --runtime-version VER     RUNTIME_VERSION, e.g. tpu-ubuntu2204-base
  --dry-run                 print the commands (shell-quoted, one per line) instead of running them
  -h, --help                this help
Flags take their value as --flag VALUE or --flag=VALUE."

die() {
  echo "error: $*" >&2
  exit 2
}

# Sets REPLY to the arguments as one shell command line (POSIX sh and bash), each quoted only
# where needed.
shell_join() {
  local arg sq="'" esc="'\\''"
  REPLY=
  for arg in "$@"; do
    case $arg in
      '' | *[![:alnum:]_@%+=:,./-]*)
        if [[ $arg != *$sq* ]]; then
          arg="'$arg'"
        elif [[ $arg != *[\"\$\`\\!]* ]]; then  # single quotes only: "...", as typed
          arg="\"$arg\""
        else
          arg=${arg//$sq/$esc}
          arg="'$arg'"
        fi ;;
    esac
    REPLY="$REPLY${REPLY:+ }$arg"
  done
}

# Runs a command, or under --dry-run prints it instead.
run() {
  if ((DRY_RUN)); then
    shell_join "$@"
    printf '%s\n' "$REPLY"
  else
    "$@"
  fi
}

# True if the calling script declared FLAG in SCRIPT_FLAGS.
script_flag() {
  case " ${SCRIPT_FLAGS:-} " in *" $1 "*) return 0 ;; esac
  return 1
}

parse_flags() {
  local config='' flag value n key
  local project='' zone='' tpu_name='' accelerator_type='' runtime_version=''
  DRY_RUN=0 SPOT=0 QUEUED=0 GRACEFUL=0 WORKER='' MODULE=prompt_tuning.train EXTRA_ARGS=()
  while (($#)); do
    flag=${1%%=*} n=2
    if [[ $1 == --*=* ]]; then value=${1#*=} n=1; else value=${2-}; fi
    case $flag in
      -h | --help) printf '%s\n%s\n' "$USAGE" "$COMMON_HELP"; exit 0 ;;
      --dry-run) DRY_RUN=1 n=1 ;;
      --config | --project | --zone | --tpu-name | --accelerator-type | --runtime-version | \
        --worker | --module)
        { ((n == 1)) || (($# >= 2)); } || die "$flag needs a value"
        case $flag in
          --config) config=$value ;;
          --project) project=$value ;;
          --zone) zone=$value ;;
          --tpu-name) tpu_name=$value ;;
          --accelerator-type) accelerator_type=$value ;;
          --runtime-version) runtime_version=$value ;;
          --worker) script_flag "$flag" || die "unknown flag $flag (see -h)"; WORKER=$value ;;
          --module) script_flag "$flag" || die "unknown flag $flag (see -h)"; MODULE=$value ;;
        esac ;;
      --spot | --queued | --graceful)
        script_flag "$flag" || die "unknown flag $flag (see -h)"
        n=1
        case $flag in --spot) SPOT=1 ;; --queued) QUEUED=1 ;; --graceful) GRACEFUL=1 ;; esac ;;
      --)
        script_flag -- || die "unexpected argument -- (see -h)"
        shift
        EXTRA_ARGS+=("$@")
        break ;;
      *)
        script_flag -- || die "unknown argument $1 (see -h)"
        EXTRA_ARGS+=("$1") n=1 ;;
    esac
    shift "$n"
  done

  [[ $MODULE =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "--module $MODULE is not a Python module name"
  LOG_FILE=prompt_tuning/${MODULE##*.}.log  # on the workers, relative to the home directory

  # Config file first, then the flags on top. Values from the environment are ignored.
  for key in $CONFIG_KEYS; do unset "$key"; done
  if [[ -z $config && -f $TPU_SCRIPTS_DIR/config.sh ]]; then config=$TPU_SCRIPTS_DIR/config.sh; fi
  if [[ -n $config ]]; then
    [[ -f $config ]] || die "config file $config not found"
    # shellcheck source=config.sh.example
    source "$config"
  fi
  CONFIG_FILE=${config:-tpu_scripts/config.sh}
  PROJECT=${project:-${PROJECT:-}}
  ZONE=${zone:-${ZONE:-}}
  TPU_NAME=${tpu_name:-${TPU_NAME:-}}
  ACCELERATOR_TYPE=${accelerator_type:-${ACCELERATOR_TYPE:-}}
  RUNTIME_VERSION=${runtime_version:-${RUNTIME_VERSION:-}}
  REPO_URL=${REPO_URL:-} REPO_BRANCH=${REPO_BRANCH:-main} PYTHON=${PYTHON:-python3.11}
  QR_ID=${QR_ID:-$TPU_NAME}
}

# Exits with a one-line error naming the first of the given config keys that is empty.
require() {
  local key flag
  for key in "$@"; do
    if [[ -z ${!key:-} ]]; then
      flag=$(tr 'A-Z_' 'a-z-' <<<"$key")
      die "$key is not set: add $key=... to $CONFIG_FILE or pass --$flag"
    fi
  done
}

# `gcloud compute tpus tpu-vm ssh` to WORKER (0, N or all) running one shell command there.
tpu_ssh() {
  require PROJECT ZONE TPU_NAME
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker="$1" --command="$2"
}
