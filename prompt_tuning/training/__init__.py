"""The training run: data, mesh and partitioning, the train step and loop, orbax checkpoints, the checks before a run writes, several hosts, preemption."""
