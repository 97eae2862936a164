"""Multi-host start-up: ``maybe_initialize()`` once, before any JAX computation.

``jax.distributed.initialize`` is called only when a cluster is detected (SLURM with
more than one task, a multi-worker TPU VM, or explicit coordinator settings in the
environment: ``JAXFACE_COORDINATOR``, ``JAXFACE_NUM_PROCESSES``,
``JAXFACE_PROCESS_ID``); on a single machine it does nothing. Calling it again is a
no-op.
"""

from __future__ import annotations

import logging
import os

_INITIALIZED = False


def cluster_detected() -> str | None:
    """The kind of cluster this process runs in, or None."""
    if os.environ.get("JAXFACE_COORDINATOR"):
        return "explicit"
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return "slurm"
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:
        return "tpu"
    return None


def maybe_initialize() -> bool:
    """Initialises jax.distributed when a cluster is detected; returns whether it did."""
    global _INITIALIZED
    if _INITIALIZED:
        return True
    kind = cluster_detected()
    if kind is None:
        return False
    import jax  # pylint: disable=import-outside-toplevel

    if kind == "explicit":
        jax.distributed.initialize(
            coordinator_address=os.environ["JAXFACE_COORDINATOR"],
            num_processes=int(os.environ["JAXFACE_NUM_PROCESSES"]),
            process_id=int(os.environ["JAXFACE_PROCESS_ID"]),
        )
    else:  # SLURM and TPU VMs are auto-detected by jax's cluster plugins.
        jax.distributed.initialize()
    _INITIALIZED = True
    logging.info(
        "jax.distributed initialised (%s): process %d of %d",
        kind,
        jax.process_index(),
        jax.process_count(),
    )
    return True
