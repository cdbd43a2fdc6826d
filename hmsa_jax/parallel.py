"""Devices, the data-parallel mesh, shardings, and host-local -> global batches.

Data parallelism is `jax.jit` over a one-axis mesh: the batch is split over "data", parameters
are replicated, and XLA inserts the all-reduces (BatchNorm statistics included, which makes
every BN synchronised across devices). The same code runs on one device, all devices of a host,
or many hosts: each process feeds its own rows and `global_batch` assembles the global array.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hmsa_jax.configlib import ConfigError  # a ValueError: callers catching that still do
from hmsa_jax.console import plural

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, local: bool = False) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (all, of all processes, by default),
    axis "data". `local`: this process's devices only (predict and autolabel work per
    process).

    Axes are Auto: Explicit axes (jax.make_mesh's default) reject bincount-style reductions.
    """
    if local:
        devices = jax.local_devices()
    else:
        # Grouped by process, so that process p's devices hold the global rows p*B/P..(p+1)*B/P-1,
        # the rows its data pipeline loads.
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices}; this process sees {plural(len(devices), 'device')}")
        if not local and jax.process_count() > 1 and num_devices != len(devices):
            raise ValueError(f"num_devices={num_devices} in a {jax.process_count()}-process job; "
                             f"multi-process runs use every device ({len(devices)}): set 0")
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
        raise ConfigError(f"{what}={global_batch_size} is not divisible by the {devices} devices "
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


class DistributedError(RuntimeError):
    """A multi-process job that could not be formed or lost a process."""


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """How this process joins a job: what asked for it and the explicit arguments (None: JAX's
    own cluster detection fills them in: SLURM, Open MPI, Cloud TPU, ...)."""

    reason: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _env_int(environ: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise DistributedError(f"environment variable {name}={value!r}; expected an "
                                       f"integer") from None
    return None


def distributed_plan(settings=None, environ: Mapping[str, str] | None = None) -> DistributedPlan | None:
    """Whether (and how) to call jax.distributed.initialize, from config.distributed (`settings`,
    defaults when None) and the environment. None: a single-process run.

    Explicit values (config, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)
    win; otherwise a SLURM job with more than one task, an Open MPI job with more than one rank
    or a TPU pod with more than one worker is joined through JAX's cluster detection.
    """
    environ = os.environ if environ is None else environ
    mode = getattr(settings, "mode", "auto")
    if mode == "off":
        return None
    address = getattr(settings, "coordinator_address", "") or environ.get("JAX_COORDINATOR_ADDRESS", "")
    count = getattr(settings, "num_processes", 0) or _env_int(environ, "JAX_NUM_PROCESSES")
    index = getattr(settings, "process_id", -1)
    index = index if index >= 0 else _env_int(environ, "JAX_PROCESS_ID")
    explicit = dict(coordinator_address=address or None, num_processes=count or None,
                    process_id=index)
    if address:
        if count == 1:
            return None
        return DistributedPlan(f"coordinator {address}", **explicit)
    if mode == "on":
        return DistributedPlan("distributed.mode='on'", **explicit)
    slurm_tasks = _env_int(environ, "SLURM_NTASKS", "SLURM_NPROCS")
    if "SLURM_JOB_ID" in environ and slurm_tasks and slurm_tasks > 1:
        return DistributedPlan(f"SLURM job {environ['SLURM_JOB_ID']} with {slurm_tasks} tasks", **explicit)
    mpi_ranks = _env_int(environ, "OMPI_COMM_WORLD_SIZE")
    if "OMPI_MCA_orte_hnp_uri" in environ and mpi_ranks and mpi_ranks > 1:
        return DistributedPlan(f"Open MPI job with {mpi_ranks} ranks", **explicit)
    tpu_workers = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(tpu_workers) > 1:
        return DistributedPlan(f"TPU pod with {len(tpu_workers)} workers", **explicit)
    return None


def initialize_distributed(settings=None, environ: Mapping[str, str] | None = None) -> DistributedPlan | None:
    """Join the multi-process job the config/environment describes (see `distributed_plan`);
    a no-op for single-process runs. Must run before any JAX computation.

    A process that cannot reach all the others within distributed.initialization_timeout_s
    raises DistributedError; once running, a process missing heartbeats for
    distributed.heartbeat_timeout_s makes the coordination service stop the others.
    """
    plan = distributed_plan(settings, environ)
    if plan is None:
        return None
    init_timeout = int(getattr(settings, "initialization_timeout_s", 300))
    heartbeat = int(getattr(settings, "heartbeat_timeout_s", 100))
    kwargs = dict(coordinator_address=plan.coordinator_address, num_processes=plan.num_processes,
                  process_id=plan.process_id, initialization_timeout=init_timeout)
    accepted = inspect.signature(jax.distributed.initialize).parameters
    if "heartbeat_timeout_seconds" in accepted:
        kwargs["heartbeat_timeout_seconds"] = heartbeat
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as error:  # XlaRuntimeError (DEADLINE_EXCEEDED, UNAVAILABLE, ...) or ValueError
        where = plan.coordinator_address or "the coordinator from the environment"
        raise DistributedError(
            f"could not join the multi-process job ({plan.reason}) at {where} as process "
            f"{plan.process_id if plan.process_id is not None else '?'} of "
            f"{plan.num_processes or '?'} within distributed.initialization_timeout_s="
            f"{init_timeout} s: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}. "
            f"Check that every process was started with the same coordinator address and "
            f"process count, that process 0 runs on the coordinator host and its port is "
            f"reachable.") from error
    return plan


def initialize_distributed_if_requested() -> DistributedPlan | None:
    """`initialize_distributed` with the default settings (environment only)."""
    return initialize_distributed(None)


def process_any(flag: bool) -> bool:
    """Whether `flag` is true on any process (a collective: every process must call it at the
    same point). Single process: the flag itself, no communication."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))
    return bool(np.any(flags))


__all__ = ["DATA_AXIS", "DistributedError", "DistributedPlan", "batch_sharded", "check_batch_size",
           "distributed_plan", "global_batch", "initialize_distributed",
           "initialize_distributed_if_requested", "make_mesh", "process_any", "replicate",
           "replicated"]
