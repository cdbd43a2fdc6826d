"""Devices, the data-parallel mesh, shardings, and host-local -> global batches.

Data parallelism is `jax.jit` over a one-axis mesh: the batch is split over "data", parameters
are replicated, and XLA inserts the all-reduces (BatchNorm statistics included, which makes
every BN synchronised across devices). The same code runs on one device, all devices of a host,
or many hosts: each process feeds its own rows and `global_batch` assembles the global array.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (all by default), axis "data".

    Axes are Auto: Explicit axes (jax.make_mesh's default) reject bincount-style reductions.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices}; this process sees {len(devices)} devices")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the data axis, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(f"{what}={global_batch_size} is not divisible by the {devices} devices "
                         f"of the mesh; use a multiple of {devices}")


def global_batch(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> one global array per key, split over the data axis.

    Single process: the local batch is the global batch. Several processes: process p holds
    rows p*B/P..(p+1)*B/P-1, the order `make_array_from_process_local_data` expects.
    """
    sharding = batch_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host pytree (same on every process) on every device of the mesh."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def initialize_distributed_if_requested() -> None:
    """Join a multi-process job when the environment describes one (SLURM, TPU pods,
    JAX_COORDINATOR_ADDRESS); a no-op for single-process runs. Must precede any computation."""
    import os

    markers = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")
    if any(os.environ.get(m) for m in markers) and int(os.environ.get("SLURM_NTASKS", "2")) > 1:
        jax.distributed.initialize()


__all__ = ["DATA_AXIS", "batch_sharded", "check_batch_size", "global_batch",
           "initialize_distributed_if_requested", "make_mesh", "replicate", "replicated"]
