"""Multi-host start-up: ``maybe_initialize()`` once, before any JAX computation.

``jax.distributed.initialize`` is called only when a cluster is detected (SLURM with
more than one task, a multi-worker TPU VM, or explicit coordinator settings in the
environment: ``JAXFACE_COORDINATOR``, ``JAXFACE_NUM_PROCESSES``,
``JAXFACE_PROCESS_ID``); on a single machine it does nothing. Calling it again is a
no-op.

What the launcher asked for (SLURM's task and GPU counts, the TPU worker list, the
``JAXFACE_*`` variables, and ``JAXFACE_EXPECTED_DEVICES`` when set) is compared with
the cluster JAX formed; a difference raises :class:`ClusterMismatchError` naming both,
before any data is read or anything is compiled. :func:`cluster_line` is the one-line
summary every process logs when training starts (``cluster: process 1 of 2 ...``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket

_INITIALIZED = False
# JAX's own port for the coordinator of a Cloud TPU slice (jax._src.clusters.cloud_tpu_cluster).
TPU_COORDINATOR_PORT = 8482


class ClusterMismatchError(RuntimeError):
    """The cluster JAX formed differs from the one the scheduler or launcher asked for."""


@dataclasses.dataclass(frozen=True)
class Expected:
    """What the environment says this process's cluster should be."""

    source: str  # e.g. "SLURM job 4242 step 0"
    processes: int
    process_id: int
    devices: int | None  # global devices, when the environment says
    devices_from: str  # how ``devices`` was derived, e.g. "1 node x 8 GPUs"

    def describe(self) -> str:
        devices = f", {self.devices} devices ({self.devices_from})" if self.devices else ""
        return f"{self.source} asked for {self.processes} processes{devices}"


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value.split("(")[0].split(":")[-1])  # "a100:8" -> 8, "2(x3)" -> 2
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def _tpu_workers() -> list[str]:
    return [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]


def cluster_detected() -> str | None:
    """The kind of cluster this process runs in, or None."""
    if os.environ.get("JAXFACE_COORDINATOR"):
        return "explicit"
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return "slurm"
    if len(_tpu_workers()) > 1:
        return "tpu"
    return None


def expected_cluster() -> Expected | None:
    """The cluster the scheduler or launcher set up for this process, from its
    environment; None outside any (a plain single-process run)."""
    override = _int_env("JAXFACE_EXPECTED_DEVICES")
    override_from = "JAXFACE_EXPECTED_DEVICES"
    if os.environ.get("JAXFACE_COORDINATOR"):
        return Expected(
            "JAXFACE_COORDINATOR/NUM_PROCESSES/PROCESS_ID",
            int(os.environ["JAXFACE_NUM_PROCESSES"]),
            int(os.environ["JAXFACE_PROCESS_ID"]),
            override,
            override_from,
        )
    if "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ:
        step = os.environ.get("SLURM_STEP_ID", os.environ.get("SLURM_STEPID"))
        source = f"SLURM job {os.environ['SLURM_JOB_ID']}" + (
            f" step {step}" if step is not None else ""
        )
        nodes = _int_env("SLURM_STEP_NUM_NODES") or _int_env("SLURM_NNODES") or 1
        gpus = _int_env("SLURM_GPUS_ON_NODE")
        devices, devices_from = override, override_from
        if devices is None and gpus:
            devices, devices_from = nodes * gpus, f"{nodes} node(s) x SLURM_GPUS_ON_NODE={gpus}"
        return Expected(
            source,
            _int_env("SLURM_STEP_NUM_TASKS") or _int_env("SLURM_NTASKS") or 1,
            int(os.environ["SLURM_PROCID"]),
            devices,
            devices_from,
        )
    workers = _tpu_workers()
    if len(workers) > 1 and "TPU_WORKER_ID" in os.environ:
        return Expected(
            "TPU_WORKER_HOSTNAMES/TPU_WORKER_ID",
            len(workers),
            int(os.environ["TPU_WORKER_ID"]),
            override,
            override_from,
        )
    return None


def mismatches(
    expected: Expected, processes: int, process_id: int, global_devices: int
) -> list[str]:
    """How the formed cluster (``processes``, ``process_id``, ``global_devices``) differs
    from ``expected``; empty when it does not."""
    out = []
    if processes != expected.processes:
        out.append(f"{expected.processes} processes asked, {processes} formed")
    if process_id != expected.process_id:
        out.append(f"process id {expected.process_id} asked, JAX says {process_id}")
    if expected.devices is not None and global_devices != expected.devices:
        out.append(f"{expected.devices} global devices asked, {global_devices} formed")
    return out


def check_cluster() -> None:
    """Raises :class:`ClusterMismatchError` when the cluster JAX formed is not the one
    the environment asked for (e.g. fewer global devices than nodes x GPUs)."""
    expected = expected_cluster()
    if expected is None:
        return
    import jax  # pylint: disable=import-outside-toplevel

    found = mismatches(expected, jax.process_count(), jax.process_index(), jax.device_count())
    if found:
        raise ClusterMismatchError(
            f"{expected.describe()}, but JAX formed {_formed(jax)}: {'; '.join(found)}"
        )


def _formed(jax) -> str:
    platform = jax.devices()[0].platform
    return (
        f"{jax.process_count()} processes (this is process {jax.process_index()}) with "
        f"{jax.local_device_count()} local / {jax.device_count()} global {platform} devices"
    )


def cluster_line(mesh) -> str:
    """One line: the cluster as this process sees it, the mesh, and what was asked."""
    import jax  # pylint: disable=import-outside-toplevel

    shape = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    expected = expected_cluster()
    asked = f"; {expected.describe()}" if expected else ""
    return (
        f"cluster: process {jax.process_index()} of {jax.process_count()} on "
        f"{socket.gethostname()} ({cluster_detected() or 'single process'}), "
        f"{jax.local_device_count()} local / {jax.device_count()} global "
        f"{jax.devices()[0].platform} devices, mesh {shape}{asked}"
    )


def log_cluster(mesh) -> None:
    """Logs :func:`cluster_line` (INFO) after checking it against the environment."""
    check_cluster()
    logging.info("%s", cluster_line(mesh))


def maybe_initialize() -> bool:
    """Initialises jax.distributed when a cluster is detected and checks the cluster it
    formed (:func:`check_cluster`); returns whether it initialised."""
    global _INITIALIZED
    if _INITIALIZED:
        return True
    kind = cluster_detected()
    if kind is None:
        check_cluster()
        return False
    import jax  # pylint: disable=import-outside-toplevel

    if kind == "explicit":
        jax.distributed.initialize(
            coordinator_address=os.environ["JAXFACE_COORDINATOR"],
            num_processes=int(os.environ["JAXFACE_NUM_PROCESSES"]),
            process_id=int(os.environ["JAXFACE_PROCESS_ID"]),
        )
    elif kind == "tpu" and "TPU_WORKER_ID" in os.environ:
        # The parameters JAX's own TPU detection derives from these variables (coordinator:
        # the first worker), given explicitly so they hold wherever the variables are set.
        port = os.environ.get("JAX_COORDINATOR_PORT") or TPU_COORDINATOR_PORT
        jax.distributed.initialize(
            coordinator_address=f"{_tpu_workers()[0]}:{port}",
            num_processes=len(_tpu_workers()),
            process_id=int(os.environ["TPU_WORKER_ID"]),
        )
    else:  # SLURM, and TPU VMs that keep the worker id in their metadata: jax's cluster plugins.
        jax.distributed.initialize()
    _INITIALIZED = True
    logging.info(
        "jax.distributed initialised (%s): process %d of %d",
        kind,
        jax.process_index(),
        jax.process_count(),
    )
    check_cluster()
    return True
