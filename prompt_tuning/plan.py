r"""Will a run fit? Compiles its real train step ahead of time and prints XLA's memory and FLOPs.

    python -m prompt_tuning.plan --gin_file=models/t5_1_1_xxl.gin \
        --gin_file=prompts/uniform.gin --gin_file=runs/prompt_finetune.gin \
        --gin_file=partitioning/gpu_1.gin --gin.FROZEN_DTYPE="'bfloat16'" \
        --gin.network.T5Config.remat_policy="'full'"

The gin files are train's (MODEL_DIR and the task are not needed) plus a preset from
`gin/partitioning/`. `trainer.Trainer`'s jitted `train_step` (its shardings, the state
donated) is lowered for the preset's mesh with `jax.ShapeDtypeStruct` inputs: nothing is
allocated, so XXL plans on a 24 GB workstation. TPU presets compile for the slice itself
through libtpu's compile-only topology (`pip install -e '.[tpu]'`; no TPU needed). GPU
presets compile for CPU devices in the preset's mesh shape (or, `--target=tpu_v5p_8`, for one
TPU's compiler): arguments are exact on any backend, temporaries are that compiler's (the
CPU's run many times a TPU's).
"""

import dataclasses
import math
import os
import re
import time
from typing import Optional

from absl import flags
import gin
import jax

from prompt_tuning import gin_config
from prompt_tuning.training import data
from prompt_tuning.training import partitioning
from prompt_tuning.training import runs
from prompt_tuning.training import trainer

_DEVICE_MEMORY_GB = flags.DEFINE_float(
    'device_memory_gb', None, 'Memory of one device in GB (1e9 bytes) to check the plan '
    "against; default: the preset's hardware (A100 40 GB, H100 80 GB, H200 141 GB for GPUs).")

GB, GIB = 1e9, 2**30
_UNUSED_BY_PLAN = ("MODEL_DIR = '(unused by plan)'", "MIXTURE_OR_TASK_NAME = '(unused by plan)'")


@dataclasses.dataclass(frozen=True)
class Hardware:
  """What a preset runs on: the memory of one JAX device and how to compile for it."""
  memories: tuple[tuple[str, float], ...]  # (name, bytes of one JAX device).
  tpu_topology: Optional[tuple[str, str]] = None  # (topology_name, chip_config_name).


_GPUS = Hardware((('A100 40 GB', 40 * GB), ('H100 80 GB', 80 * GB), ('H200 141 GB', 141 * GB)))
_V3, _V4 = ('TPU v3 core, 16 GiB', 16 * GIB), ('TPU v4 chip, 32 GiB', 32 * GIB)
# Cloud TPU documentation: HBM per chip (v3: 32 GiB shared by its 2 cores, each a JAX device).
HARDWARE = {
    'tpu_v3_8': Hardware((_V3,), ('v3:2x2', 'default')),
    'tpu_v3_32': Hardware((_V3,), ('v3:4x4', 'default')),
    'tpu_v4_8': Hardware((_V4,), ('v4:2x2x1', 'megacore')),
    'tpu_v4_32': Hardware((_V4,), ('v4:2x2x4', 'megacore')),
    'tpu_v4_64': Hardware((_V4,), ('v4:2x4x4', 'megacore')),
    'tpu_v5e_16': Hardware((('TPU v5e chip, 16 GB', 16 * GB),), ('v5e:4x4', 'default')),
    'tpu_v5p_8': Hardware((('TPU v5p chip, 95 GB', 95 * GB),), ('v5:2x2x1', 'megacore')),
}


_TARGET = flags.DEFINE_enum(
    'target', 'auto', ['auto', 'cpu', *HARDWARE], 'What to compile for: auto = TPU presets for '
    "their slice, GPU presets for CPU devices; cpu = CPU devices in the preset's mesh shape; a "
    "TPU slice = that slice's compiler standing in (e.g. a GPU preset on tpu_v5p_8).")


def preset_name(gin_files: list[str]) -> str:
  """The partitioning preset among the gin files (`partitioning/tpu_v4_8.gin` -> 'tpu_v4_8')."""
  names = [m[1] for f in gin_files if (m := re.search(r'partitioning/(\w+)\.gin$', f))]
  if not names:
    raise ValueError('plan needs a mesh preset: add --gin_file=partitioning/gpu_1.gin (or '
                     'another file in gin/partitioning/).')
  return names[-1]


def hardware(preset: str) -> Hardware:
  """The hardware a preset describes (`*_xxl` presets run on their base slice)."""
  base = preset.removesuffix('_xxl')
  return _GPUS if base.startswith('gpu_') else HARDWARE.get(base, Hardware(()))


def tpu_devices(topology: tuple[str, str]) -> list:
  """Compile-only devices of a TPU slice, from libtpu (no TPU attached)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  name, chip_config = topology
  try:
    return list(topologies.get_topology_desc(
        platform='tpu', topology_name=name, chip_config_name=chip_config,
        chips_per_host_bounds=(2, 2, 1), num_slices=1).devices)
  except Exception as e:  # pylint: disable=broad-except  # libtpu absent or refusing.
    raise RuntimeError(f'cannot compile for TPU {name} here ({gin_config.one_line(e)[:200]}); '
                       "install libtpu (pip install -e '.[tpu]') or pass --target=cpu.") from None


def cpu_devices(count: int) -> list:
  """`count` CPU devices: asks JAX for them if it has not started yet."""
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:
    pass  # JAX already started (tests): use the devices it has.
  devices = jax.devices('cpu')
  if len(devices) < count:
    raise RuntimeError(f'the mesh needs {count} CPU devices but JAX started with '
                       f'{len(devices)}; run python -m prompt_tuning.plan in a process of its own.')
  return devices[:count]


@dataclasses.dataclass
class Plan:
  """What XLA says about one compiled train step; bytes and FLOPs are per device."""
  memory: dict[str, int]  # arguments, outputs, aliased, temporaries, generated code, total.
  flops: float
  devices: int
  device_kind: str
  seconds: float  # Lowering and compiling.


def compile_train_step(setup: runs.RunSetup, shapes: dict, mesh) -> Plan:
  """Compiles `trainer.Trainer(...).train_step` for `mesh` from shapes alone.

  Args:
    setup: the run's model, optimiser, trainable parameters and FROZEN_DTYPE.
    shapes: `model.batch_shapes(...)`: `[B, L]` / `[B, T]` int32 `ShapeDtypeStruct`s.
    mesh: the preset's `('data', 'model')` mesh, on CPU or compile-only TPU devices.
  """
  start = time.perf_counter()
  shardings = partitioning.logical_shardings(mesh, setup.model.logical_axes(shapes))
  params = runs.abstract_params(setup.model, shapes, shardings)
  trainable, frozen = trainer.split_params(params, setup.trainable_parameters)
  cast = jax.eval_shape(lambda tree: trainer.cast_frozen(tree, setup.frozen_dtype), frozen)
  frozen = jax.tree.map(lambda x, c: jax.ShapeDtypeStruct(c.shape, c.dtype, sharding=x.sharding),
                        frozen, cast)
  state = trainer.abstract_state(trainable, setup.optimizer, mesh)
  batch_sharding = partitioning.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
           for k, v in shapes.items()}
  step = trainer.Trainer(setup.model, setup.optimizer, trainer.state_shardings(state),
                         jax.tree.map(lambda x: x.sharding, frozen), batch_sharding).train_step
  compiled = step.lower(state, frozen, batch).compile()
  stats = compiled.memory_analysis()
  memory = {'arguments': stats.argument_size_in_bytes, 'outputs': stats.output_size_in_bytes,
            'aliased': stats.alias_size_in_bytes, 'temporaries': stats.temp_size_in_bytes,
            'generated code': stats.generated_code_size_in_bytes}
  memory['total'] = (memory['arguments'] + memory['outputs'] - memory['aliased'] +
                     memory['temporaries'] + memory['generated code'])
  devices = mesh.devices.flat
  return Plan(memory, float(compiled.cost_analysis().get('flops', 0.0)), mesh.devices.size,
              next(iter(devices)).device_kind, time.perf_counter() - start)


def report(plan: Plan, memories: tuple[tuple[str, float], ...], stand_in: bool,
           scanned: bool = False) -> list[str]:
  """The plan as lines: memory per device, FLOPs, and whether it fits each memory (`stand_in`:
  compiled for other devices than the preset's; `scanned`: the layers are one loop)."""
  lines = [f'per device ({plan.devices} x {plan.device_kind}):']
  lines += [f'  {name:15s} {size / GIB:9.3f} GiB {size:18,d} bytes'
            for name, size in plan.memory.items()]
  lines.append(f'XLA FLOPs per step: {plan.flops:.4g} per device, '
               f'{plan.flops * plan.devices:.4g} in all' +
               (' (a scanned layer counted once: XLA does not multiply loop bodies)'
                if scanned else ''))
  for name, size in memories:
    verdict = 'fits' if plan.memory['total'] <= size else 'does NOT fit'
    lines.append(f'{verdict} {name} ({size / GIB:.1f} GiB): '
                 f'{100 * plan.memory["total"] / size:.0f}% used')
  if stand_in:
    lines.append(f"memory figures are XLA's {plan.device_kind} compiler's, standing in for the "
                 "preset's devices, not what their own compiler assigns" +
                 (" (the CPU compiler's temporaries run many times a TPU's)"
                  if plan.device_kind == 'cpu' else '') +
                 '; JAX on a GPU takes 75% of its memory unless XLA_PYTHON_CLIENT_MEM_FRACTION '
                 'says more.')
  return lines


def main(argv):
  del argv
  gin_files = flags.FLAGS.gin_file
  try:
    gin_config.parse(gin_files, [*_UNUSED_BY_PLAN, *flags.FLAGS.gin_bindings],
                     flags.FLAGS.gin_search_paths)
  except ValueError as e:
    if str(e).startswith('--gin.MODEL_DIR sets a macro that nothing'):
      raise ValueError('plan compiles a run: add its gin files, e.g. '
                       '--gin_file=runs/prompt_finetune.gin.') from None
    raise
  preset = preset_name(gin_files)
  target = hardware(preset)
  data_model = gin.query_parameter('partitioning.create_mesh.mesh_shape')
  train_data = data.DataConfig()
  if train_data.batch_size % data_model[0]:
    raise ValueError(f'BATCH_SIZE={train_data.batch_size} must be a multiple of the mesh\'s '
                     f'data size {data_model[0]}; change --gin.BATCH_SIZE.')
  topology = {'auto': target.tpu_topology, 'cpu': None}.get(
      _TARGET.value, HARDWARE.get(_TARGET.value, Hardware(())).tpu_topology)
  count = math.prod(data_model)
  devices = cpu_devices(count) if topology is None else tpu_devices(topology)[:count]
  mesh = partitioning.create_mesh(devices=devices)
  setup = runs.RunSetup()
  config = setup.model.module.config
  prompt = setup.model.module.prompt_length
  lengths = train_data.task_feature_lengths
  print(f'plan: preset {preset}, mesh data {data_model[0]} x model {data_model[1]}; batch '
        f'{train_data.batch_size}, inputs {lengths["inputs"]}, targets {lengths["targets"]}, '
        f'prompt {prompt}; activations {config.dtype}, frozen {setup.frozen_dtype or "as created"}'
        f', remat {config.remat_policy}, scan_layers {config.scan_layers}')
  plan = compile_train_step(setup, setup.model.batch_shapes(lengths, train_data.batch_size),
                            mesh)
  print(f'compiled in {plan.seconds:.1f} s on {os.cpu_count()} CPU cores')
  memories = (('--device_memory_gb', _DEVICE_MEMORY_GB.value * GB),) if (
      _DEVICE_MEMORY_GB.value) else target.memories
  stand_in = target.tpu_topology is None or topology != target.tpu_topology
  print('\n'.join(report(plan, memories, stand_in, config.scan_layers)))


if __name__ == '__main__':
  gin_config.run(main)
