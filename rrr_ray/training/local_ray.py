"""The local Ray cluster a training job starts when none is given (``RAY_ADDRESS`` unset)."""

from __future__ import annotations

import logging
from pathlib import Path

PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
"""Ray Train's placement-group cleaner asks Ray's State API, every second, whether the train
controller lives; without a dashboard (a local training cluster starts none) the State API is not
there and it warns each time. The local cluster ends with the job, placement groups included."""


def quiet_train_workers() -> None:
    """``worker_process_setup_hook`` of the local cluster: no warning per second from the cleaner."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def init_local_ray(num_cpus: int) -> None:
    """A new local Ray cluster (never one found on this machine) of ``num_cpus`` CPUs, no dashboard,
    this checkout on the workers' path."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd())},
                          "worker_process_setup_hook": f"{__name__}.quiet_train_workers"})
