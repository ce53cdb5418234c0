"""Hydra plugins of `degrade`: a sweeper that trains nothing twice and launchers that use the
whole machine or a SLURM cluster.

    degrade sweep experiment=fig6                                   # hydra/launcher=local
    degrade sweep experiment=fig6 hydra.launcher.runs_per_gpu=2     # 2 runs on each GPU
    degrade sweep experiment=fig6 hydra/launcher=slurm hydra.launcher.partition=gpu

- `hydra/sweeper=degrade` (sweeper.py): Hydra's basic-sweeper expansion, then one job per
  distinct run folder, none for a finished run.
- `hydra/launcher=local` (local_launcher.py): parallel subprocesses, each pinned to its GPU(s)
  or its share of the CPU cores, each writing to its own run folder's log.
- `hydra/launcher=slurm` and `slurm_local` (submitit_launchers.py): hydra-submitit-launcher's
  executors, with runs requeued into their own folder after preemption or a time limit.

Hydra only instantiates plugin classes defined under the `hydra_plugins` namespace package,
hence this folder; its configs live with the project's in conf/hydra/.
"""

from __future__ import annotations


def plugins() -> list[type]:
    """Our plugin classes, for `Plugins.register` (the namespace scan misses editable
    installs): the `degrade.hydra_plugins` entry point of pyproject.toml."""
    from hydra_plugins.degrade_launcher.local_launcher import ParallelLauncher
    from hydra_plugins.degrade_launcher.submitit_launchers import available
    from hydra_plugins.degrade_launcher.sweeper import DegradeSweeper

    return [DegradeSweeper, ParallelLauncher, *available()]
