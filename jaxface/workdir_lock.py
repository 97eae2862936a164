"""One training run per workdir: ``<workdir>/LOCK``.

Two runs writing checkpoints into one workdir interleave them: both report
``finished`` and the first run's result has no weights behind it. `WorkdirLock` holds an
exclusive ``flock`` on ``<workdir>/LOCK`` for the life of the run and writes the owner
(pid, host, start time) into it, so a second run is refused with a message naming the
first. The kernel drops the lock when its process dies (``kill -9`` included), so a lock
left by a dead run is *stale*: its file still names the old owner but nothing holds it;
the next run takes it over and says so. A run that ends normally empties the file.

The file is never deleted: a process that opened it just before a deletion could lock a
file no one else sees. On network filesystems ``flock`` maps to POSIX byte-range locks
(NFSv4, Lustre, GPFS), which the server releases when the owner's host is gone.

Multi-process training (several processes of one run share the workdir): process 0
holds the lock and the others agree on the outcome (`acquire_for_run`), so a refused
run stops on every process together.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time

__all__ = ["LOCK_NAME", "WorkdirLockedError", "WorkdirLock", "acquire_for_run"]

LOCK_NAME = "LOCK"


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir (the message names its pid and host)."""


class WorkdirLock:
    """``with WorkdirLock(workdir): ...``; `acquire` returns a note when it took over a
    stale lock (None otherwise) and raises `WorkdirLockedError` when the workdir is in use."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None

    def _owner(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        try:
            owner = json.loads(data.decode()) if data.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            owner = {"unparsed": data[:200].decode(errors="replace")}
        return owner if isinstance(owner, dict) else {"unparsed": str(owner)[:200]}

    @staticmethod
    def _describe(owner: dict) -> str:
        if not owner:
            return "another process (its owner is not recorded yet)"
        if "pid" not in owner:
            return f"an unknown owner ({owner})"
        started = owner.get("started")
        since = (
            time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started))
            if isinstance(started, (int, float))
            else ""
        )
        return f"pid {owner['pid']} on host {owner.get('host', '?')}{since}"

    def acquire(self) -> str | None:
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._owner(fd)
            os.close(fd)
            raise WorkdirLockedError(
                f"workdir {self.workdir} is in use by a running jaxface train: "
                f"{self._describe(owner)} holds {self.path}; wait for it to finish or use "
                "another --workdir"
            ) from None
        except OSError:
            os.close(fd)
            raise
        previous = self._owner(fd)
        note = None
        if previous:
            note = (
                f"took over the stale lock {self.path} of {self._describe(previous)}: that "
                "run ended without releasing it (killed or crashed) and nothing holds it"
            )
            logging.warning("%s", note)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return note

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty file: released cleanly
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def acquire_for_run(workdir: str) -> WorkdirLock | None:
    """Process 0 takes the lock; with several processes every one learns the outcome and a
    refusal is raised on all of them. Returns the held lock (process 0) or None."""
    import jax  # pylint: disable=import-outside-toplevel

    lock, error = None, None
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir)
        try:
            lock.acquire()
        except WorkdirLockedError as err:
            lock, error = None, err
    if jax.process_count() > 1:
        import numpy as np  # pylint: disable=import-outside-toplevel
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        refused = bool(np.any(multihost_utils.process_allgather(np.asarray(error is not None))))
        if refused and error is None:
            if lock is not None:
                lock.release()
            error = WorkdirLockedError(
                f"workdir {workdir} is in use by another run (process 0 of this run names it)"
            )
    if error is not None:
        raise error
    return lock
