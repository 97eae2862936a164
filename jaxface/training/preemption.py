"""SIGTERM / SIGINT during training: finish the step, save, stop (`PreemptionFlag`)."""

from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

__all__ = ["PreemptionFlag"]


class PreemptionFlag:
    """Sets itself on SIGTERM / SIGINT while installed (main thread only)."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self._event = threading.Event()
        self._previous = {}
        self.received = None

    def _handler(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name
        logging.warning(
            "received %s: finishing the step, saving a checkpoint, exiting", self.received
        )
        self._event.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False

    def is_set(self, step: int, sync_every: int = 1) -> bool:
        """Whether any process received a signal.

        With several processes every host must agree (they all save, then stop), which
        takes a cross-host all-gather; that sync runs only every ``sync_every`` steps so
        it is not a collective on every step's hot path.
        """
        local = self._event.is_set()
        if jax.process_count() > 1:
            if step % max(1, sync_every):
                return False
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

            return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))
        return local
