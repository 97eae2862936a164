"""Progress and ETA lines for every phase that takes more than a few seconds.

One place formats durations, rates and ETAs, so that data generation, compilation,
training and evaluation read alike in the log:

  generating synthetic_faces/attributes train: 2,048/6,000 examples (410/s, ETA 9s)
  compiling the train step...
  compiled the train step in 41s
  step 200/400 (50%), 6.5 steps/s, ETA 31s (time: 12% eval, 3% checkpoint)

Only the standard library and ``clu`` (already a dependency of the trainer) are used.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Iterator, Mapping, TypeVar

__all__ = [
    "format_duration",
    "format_count",
    "Phase",
    "RateLogger",
    "FirstCall",
    "report_progress",
    "config_summary",
]

T = TypeVar("T")


def format_duration(secs: float) -> str:
    """Seconds as a person reads them: ``0.4s``, ``42s``, ``2m 05s``, ``1h 02m``, ``2d 03h``."""
    secs = max(0.0, float(secs))
    if secs < 10:
        return f"{secs:.1f}s"
    s = int(round(secs))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def format_count(n: float) -> str:
    """``12345`` -> ``12,345``; rates below 10 keep one decimal (``6.5``)."""
    if isinstance(n, float) and abs(n) < 10:
        return f"{n:.1f}"
    return f"{int(round(n)):,}"


class _Heartbeat:
    """A daemon thread that logs ``still <what> (<time>)`` every ``every_secs`` until
    stopped: the silence of a long phase broken at a steady rate."""

    def __init__(self, what: str, every_secs: float, logger=logging):
        self.what, self.every_secs, self.logger = what, every_secs, logger
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.every_secs):
            self.logger.info(
                "still %s (%s)", self.what, format_duration(time.monotonic() - self._t0)
            )

    def stop(self):
        self._stop.set()
        self._thread.join()


class Phase:
    """Logs ``<what>...`` on entry, ``still <what> (<time>)`` every ``every_secs`` while it
    lasts, and ``<what> done in <time>`` on exit; ``.seconds`` is the wall time (also
    available after an exception, which is not logged here). ``quiet=True`` logs only the
    ``still`` lines: for a phase that usually ends within ``every_secs`` and says what it
    did itself (a training hook)."""

    def __init__(self, what: str, logger=logging, every_secs: float = 10.0, quiet: bool = False):
        self.what, self.logger, self.seconds = what, logger, 0.0
        self.every_secs, self.quiet = every_secs, quiet
        self._t0 = 0.0
        self._beat = None

    def __enter__(self):
        if not self.quiet:
            self.logger.info("%s...", self.what)
        self._t0 = time.monotonic()
        self._beat = _Heartbeat(self.what, self.every_secs, self.logger)
        return self

    def __exit__(self, exc_type, exc, tb):
        self._beat.stop()
        self.seconds = time.monotonic() - self._t0
        if exc_type is None and not self.quiet:
            self.logger.info("%s done in %s", self.what, format_duration(self.seconds))
        return False


class RateLogger:
    """Counts items and logs ``<what>: n/total <unit> (rate/s, ETA ...)`` at most every
    ``every_secs`` seconds, and once at the end (`finish`)."""

    def __init__(
        self, what: str, total: int | None = None, unit: str = "examples", every_secs=10.0
    ):
        self.what, self.total, self.unit, self.every_secs = what, total, unit, every_secs
        self.count = 0
        self._t0 = self._last = time.monotonic()

    def line(self) -> str:
        dt = max(time.monotonic() - self._t0, 1e-9)
        rate = self.count / dt
        done = format_count(self.count)
        if self.total:
            done += f"/{format_count(self.total)}"
        msg = f"{self.what}: {done} {self.unit} ({format_count(rate)}/s"
        if self.total and rate > 0 and self.count < self.total:
            msg += f", ETA {format_duration((self.total - self.count) / rate)}"
        return msg + ")"

    def update(self, n: int = 1):
        self.count += n
        now = time.monotonic()
        if now - self._last >= self.every_secs:
            self._last = now
            logging.info("%s", self.line())

    def finish(self):
        dt = time.monotonic() - self._t0
        logging.info(
            "%s: %s %s in %s",
            self.what,
            format_count(self.count),
            self.unit,
            format_duration(dt),
        )

    def wrap(self, it: Iterable[T]) -> Iterator[T]:
        """Yields ``it``'s items, counting each; logs the final line when it is exhausted."""
        for x in it:
            yield x
            self.update()
        self.finish()


class FirstCall:
    """A context manager that logs ``<what>...`` and its time around its first use only
    (the first call of a jitted function is its compilation: ``FirstCall("compiling the
    train step")``), with a ``still <what> (<time>)`` line every ``every_secs`` while it
    lasts; later uses cost nothing."""

    def __init__(self, what: str, done: str, every_secs: float = 10.0):
        self.what, self.done, self.used, self.seconds = what, done, False, None
        self.every_secs = every_secs
        self._t0 = None
        self._beat = None

    def __enter__(self):
        if not self.used:
            logging.info("%s...", self.what)
            self._t0 = time.monotonic()
            self._beat = _Heartbeat(self.what, self.every_secs)
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.used:
            self.used = True
            self._beat.stop()
            self.seconds = time.monotonic() - self._t0
            if exc_type is None:
                logging.info("%s in %s", self.done, format_duration(self.seconds))
        return False


def report_progress(**kwargs):
    """clu's ``ReportProgress`` (same arguments, triggers, ``timed`` parts and
    ``steps_per_sec`` / ``uptime`` scalars) that logs one line with an ETA in seconds:
    ``step 200/400 (50%), 6.5 steps/s, ETA 31s (time: 12% eval, 3% checkpoint)``.

    Built on first use: clu (and through it TensorFlow) is imported only by the trainer."""
    from clu import periodic_actions  # pylint: disable=import-outside-toplevel

    class ReportProgress(periodic_actions.ReportProgress):
        def _apply(self, step: int, t: float):
            steps_per_sec = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
            total = self._num_train_steps
            msg = f"step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else "")
            msg += f", {format_count(steps_per_sec)} steps/s"
            if total and step < total and steps_per_sec > 0:
                msg += f", ETA {format_duration((total - step) / steps_per_sec)}"
            if self._time_per_part:
                elapsed = time.monotonic() - self._t0
                parts = ", ".join(
                    f"{100 * dt / elapsed:.0f}% {name}"
                    for name, dt in sorted(self._time_per_part.items())
                )
                msg += f" (time: {parts})"
            logging.info("%s", msg)
            if self._writer is not None:
                self._writer.write_scalars(
                    step, {"steps_per_sec": steps_per_sec, "uptime": time.monotonic() - self._t0}
                )

    return ReportProgress(**kwargs)


def config_summary(config: Mapping) -> str:
    """One line naming what a run does (the full config is in the workdir's config.json)."""
    get = config.get
    parts = [f"task {get('task')}"]
    if get("method_name"):
        parts.append(str(get("method_name")))
    data = get("data") or {}
    builder = data.get("builder") if hasattr(data, "get") else None
    if builder:
        parts.append(f"data {builder}/{data.get('config') or 'default'}")
    for key, label in (("num_train_steps", "steps"), ("batch_size", "batch")):
        if get(key) is not None:
            parts.append(f"{label} {get(key)}")
    opt = get("optimizer")
    if hasattr(opt, "get") and opt.get("name"):
        parts.append(f"{opt.get('name')} lr {opt.get('learning_rate')}")
    if get("seed") is not None:
        parts.append(f"seed {get('seed')}")
    return ", ".join(parts)
