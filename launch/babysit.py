#!/usr/bin/env python3
"""Preemption babysitter: rerun a training command until its workdir says "finished".

    launch/babysit.py --workdir WORKDIR [--max-restarts 100] [--max-failures 3] -- COMMAND [ARGS...]

The trainer resumes from the workdir's latest checkpoint by itself, saves a checkpoint
on SIGTERM, and writes ``WORKDIR/result.json`` with ``"status"``: ``finished``,
``preempted`` or ``stopped`` (``config.stop_at_step`` reached). After each run this
script reads that file -- only if the run wrote it (its mtime is newer than the launch;
a stale file from an earlier run is ignored) -- and

- ``finished``  -> exit 0 (also checked before the first launch: nothing to do);
- ``stopped``   -> exit 0 (an intentional stop; relaunching would stop again at once);
- ``preempted`` -> relaunch at once (counts against ``--max-restarts``);
- no fresh result.json (crash, SIGKILL, node loss) -> relaunch after ``--backoff`` seconds,
  at most ``--max-failures`` times in a row (a run that advances the checkpoint step
  resets that count), then exit 1.

SIGTERM / SIGINT sent to the babysitter are forwarded to the command (so it saves and
writes "preempted"); the babysitter then exits with 143 / 130 instead of relaunching:
when the machine itself is being taken away, relaunching on it is pointless. Use the
scheduler's requeue (launch/slurm.sbatch) or rerun this script on the new machine.

``--result`` may point elsewhere than WORKDIR/result.json; a ``gs://`` path is read with
``gcloud storage cat`` (for TPU pods writing their workdir to Cloud Storage).
Standard library only; no JAX import, so it costs nothing while the job runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time


def log(msg: str) -> None:
    print(f"[babysit {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_result(path: str, newer_than: float | None) -> dict | None:
    """The parsed result file, or None when absent, stale, or unreadable."""
    try:
        if path.startswith("gs://"):
            text = subprocess.run(
                ["gcloud", "storage", "cat", path], check=True, capture_output=True, text=True
            ).stdout
            # Cloud Storage mtimes are not checked here; the trainer overwrites the file every run.
            return json.loads(text)
        p = pathlib.Path(path)
        if newer_than is not None and p.stat().st_mtime < newer_than:
            return None
        return json.loads(p.read_text())
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None


def latest_step(workdir: str) -> int | None:
    """The highest numeric checkpoint directory under WORKDIR/checkpoints (local paths only)."""
    d = pathlib.Path(workdir) / "checkpoints"
    try:
        steps = [int(c.name) for c in d.iterdir() if c.name.isdigit()]
    except OSError:
        return None
    return max(steps) if steps else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", required=True, help="the trainer's workdir")
    ap.add_argument("--result", default=None, help="result file (default: WORKDIR/result.json)")
    ap.add_argument("--max-restarts", type=int, default=100, help="relaunches after preemption")
    ap.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="consecutive runs without a result.json before giving up",
    )
    ap.add_argument("--backoff", type=float, default=10.0, help="seconds to wait after a crash")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given (put it after --)")
    result_path = args.result or os.path.join(args.workdir, "result.json")

    done = read_result(result_path, None)
    if done and done.get("status") == "finished":
        log(f"{result_path} already says finished (step {done.get('step')}); nothing to do")
        return 0

    received: list[int] = []
    child: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        received.append(signum)
        if child is not None and child.poll() is None:
            log(f"got signal {signum}; forwarding to the command (pid {child.pid})")
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    restarts = failures = 0
    attempt = 0
    while True:
        attempt += 1
        before = latest_step(args.workdir)
        launched = time.time() - 1.0  # mtime granularity
        log(f"attempt {attempt}: {' '.join(cmd)}")
        child = subprocess.Popen(cmd)
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:  # pragma: no cover (PEP 475 retries wait itself)
                continue
        res = read_result(result_path, launched)
        status = res.get("status") if res else None
        log(
            f"attempt {attempt}: exit code {rc}, status {status!r}, step "
            f"{res.get('step') if res else latest_step(args.workdir)}"
        )
        if received:
            sig = received[0]
            log(f"stopping after signal {sig} (not relaunching on a machine that is going away)")
            return 128 + sig
        if status == "finished":
            return 0
        if status == "stopped":
            log("status 'stopped' (config.stop_at_step reached): not relaunching")
            return 0
        if status == "preempted":
            restarts += 1
            failures = 0
            if restarts > args.max_restarts:
                log(f"giving up: more than --max-restarts={args.max_restarts} preemptions")
                return 1
            continue
        after = latest_step(args.workdir)
        failures = 0 if (after is not None and after != before) else failures + 1
        if failures >= args.max_failures:
            log(
                f"giving up: {failures} consecutive runs ended without a result.json and without a new "
                f"checkpoint (last exit code {rc})"
            )
            return rc or 1
        log(f"no fresh result.json; relaunching in {args.backoff:g} s")
        time.sleep(args.backoff)


if __name__ == "__main__":
    sys.exit(main())
