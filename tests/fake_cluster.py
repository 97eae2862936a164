#!/usr/bin/env python3
"""SLURM and Cloud TPU command-line tools emulated on one machine, for running the
unmodified launch scripts (launch/slurm.sbatch, launch/tpu_pod.sh) in tests.

    python tests/fake_cluster.py install BIN_DIR   # writes sbatch, srun, scontrol, scancel, gcloud
    PATH=BIN_DIR:$PATH FAKE_CLUSTER_STATE=/tmp/fc sbatch --nodes=1 ... launch/slurm.sbatch ...

Every "node" and every TPU worker is this host; processes are real, signals are real.
Standard library only. State (job records, task pids, requeues) lives in
``$FAKE_CLUSTER_STATE`` (required).

SLURM (what is emulated, as SLURM documents it):

* ``sbatch [options] SCRIPT [ARGS]``: options from the script's ``#SBATCH`` lines, then
  from the command line (which wins); prints ``Submitted batch job N`` and runs the
  script at once on this host, waiting for it like ``sbatch --wait`` (exit code: the
  script's). The batch environment has ``SLURM_JOB_ID``, ``SLURM_JOB_NAME``,
  ``SLURM_NNODES``, ``SLURM_NTASKS``, ``SLURM_NTASKS_PER_NODE``, ``SLURM_GPUS_ON_NODE``,
  ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST`` (this host's name, once per node),
  ``SLURM_OPEN_MODE``, and ``SLURM_RESTART_COUNT`` once requeued. ``--output`` accepts
  ``%x %j %N %u %%``. When ``scontrol requeue`` was called for the job while it ran and
  the job is requeueable (``--requeue``), the script runs again with the restart count
  incremented (at most ``FAKE_SLURM_MAX_RUNS`` runs, default 5). The job id is chosen so
  that the port JAX derives from it (``61440 + id % 4096``) is free.
* ``srun [--kill-on-bad-exit[=0|1]] [-K] [-l] [--output=PATTERN] [-n N] [-N N]
  [--ntasks-per-node=N] CMD...``: starts the step's tasks (block distribution over the
  nodes) with ``SLURM_STEP_ID``, ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``,
  ``SLURM_NTASKS``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_STEP_NUM_NODES``,
  ``SLURM_STEP_NODELIST``, ``SLURMD_NODENAME``. Output: stdout and stderr of a task go to
  the ``--output`` pattern (``%t %n %N %j %J %s %%``; appended when the job's open mode
  is append) or to srun's stdout; ``-l`` prefixes each line with the task number. With
  ``--kill-on-bad-exit=1``, the first task that exits non-zero or dies of a signal ends
  the step: the others get SIGTERM and, ``FAKE_SLURM_KILL_WAIT`` seconds later
  (SLURM's KillWait, default 30), SIGKILL. Exit code: the largest of the tasks' (128 +
  signal for a task killed by one). SIGTERM / SIGINT / SIGUSR1 / SIGUSR2 to srun are
  forwarded to the tasks.
* ``scontrol requeue JOBID``: recorded (``$FAKE_CLUSTER_STATE/slurm/JOBID/requeue.log``,
  one line per call with the restart count); an error for a job without ``--requeue``.
* ``scancel --signal=SIG JOBID``: sends SIG to every task of the job's running steps,
  which is how ``#SBATCH --signal=TERM@180`` delivers SIGTERM before the time limit.

Cloud TPU:

* ``gcloud compute tpus tpu-vm ssh NAME --zone ZONE [--project P] --worker=all|K
  --command=CMD``: runs ``bash -c CMD`` for each worker at once (``FAKE_TPU_WORKERS``
  workers, default 2), each in its own home ``$FAKE_CLUSTER_STATE/tpu/NAME/worker<K>`` and
  with the environment of a login on a TPU VM rather than the caller's: ``HOME``,
  ``USER``, ``PATH`` (``FAKE_TPU_PATH`` prepended to /usr/bin:/bin), ``TPU_WORKER_ID``,
  ``TPU_WORKER_HOSTNAMES`` (this host, once per worker), plus ``FAKE_TPU_ENV`` (a JSON
  object: the VM's own settings, e.g. ``JAX_PLATFORMS``). Exit code: the first
  failing worker's, else 0.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

HOST = socket.gethostname()
COMMANDS = ("sbatch", "srun", "scontrol", "scancel", "gcloud")


def die(tool: str, msg: str, code: int = 1):
    print(f"{tool}: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def state_dir(*parts: str) -> pathlib.Path:
    root = os.environ.get("FAKE_CLUSTER_STATE")
    if not root:
        die("fake_cluster", "FAKE_CLUSTER_STATE is not set")
    d = pathlib.Path(root).joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def parse_options(tool: str, args: list[str], spec: dict[str, tuple[str, bool]]):
    """GNU-style options -> ({name: value}, rest). ``spec`` maps each spelling
    (``--nodes``, ``-N``) to (name, takes_value); a value-less option stores True.
    Parsing stops at the first non-option (the command)."""
    opts: dict[str, object] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return opts, args[i + 1 :]
        if not a.startswith("-") or a == "-":
            break
        key, eq, value = a.partition("=") if a.startswith("--") else (a[:2], "", a[2:])
        if key not in spec:
            die(tool, f"option {key} is not emulated", 2)
        name, takes_value = spec[key]
        if takes_value:
            if not eq and not value:
                i += 1
                if i >= len(args):
                    die(tool, f"option {key} needs a value", 2)
                value = args[i]
            opts[name] = value
        elif eq:  # --kill-on-bad-exit=0
            opts[name] = value
        else:
            opts[name] = True
            if value and not a.startswith("--"):  # -lK: bundled short flags
                args = args[: i + 1] + [f"-{value}"] + args[i + 1 :]
        i += 1
    return opts, args[i:]


# --------------------------------------------------------------------------- SLURM

SBATCH_OPTIONS = {
    "--job-name": ("job_name", True),
    "-J": ("job_name", True),
    "--nodes": ("nodes", True),
    "-N": ("nodes", True),
    "--ntasks": ("ntasks", True),
    "-n": ("ntasks", True),
    "--ntasks-per-node": ("ntasks_per_node", True),
    "--gpus-per-node": ("gpus_per_node", True),
    "--cpus-per-task": ("cpus_per_task", True),
    "--time": ("time", True),
    "-t": ("time", True),
    "--requeue": ("requeue", False),
    "--no-requeue": ("no_requeue", False),
    "--open-mode": ("open_mode", True),
    "--output": ("output", True),
    "-o": ("output", True),
    "--signal": ("signal", True),
    "--wait": ("wait", False),
    "-W": ("wait", False),
}


def _int(tool: str, name: str, value) -> int:
    try:
        n = int(str(value).split(":")[-1])  # --gpus-per-node=a100:8
    except ValueError:
        die(tool, f"--{name.replace('_', '-')}={value!r} is not an integer", 2)
    if n < 1:
        die(tool, f"--{name.replace('_', '-')}={value} must be >= 1", 2)
    return n


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _new_job_id() -> int:
    # JAX's SLURM plugin puts the coordinator on port 61440 + job_id % 4096.
    for _ in range(200):
        job = random.randrange(4096, 1 << 20)
        if _port_free(61440 + job % 4096) and not state_dir("slurm").joinpath(str(job)).exists():
            return job
    die("sbatch", "no free coordinator port found")


def _sbatch_script_options(script: pathlib.Path) -> list[str]:
    """The ``#SBATCH`` options before the first command line (where sbatch stops)."""
    out = []
    for line in script.read_text().splitlines()[1:]:
        s = line.strip()
        if s and not s.startswith("#"):
            break
        if s.startswith("#SBATCH"):
            out += shlex.split(s[len("#SBATCH") :], comments=True)
    return out


def _expand(pattern: str, table: dict[str, str]) -> str:
    def sub(m):
        key = m.group(1)
        if key not in table:
            die("fake_cluster", f"filename pattern %{key} in {pattern!r} is not emulated", 2)
        return table[key]

    return re.sub(r"%(.)", sub, pattern)


def sbatch(argv: list[str]) -> int:
    if not argv:
        die("sbatch", "no batch script given", 2)
    # The script's own options come first; the command line overrides them.
    cli, rest = parse_options("sbatch", argv, SBATCH_OPTIONS)
    if not rest:
        die("sbatch", "no batch script given", 2)
    script, script_args = pathlib.Path(rest[0]), rest[1:]
    opts, _ = parse_options("sbatch", _sbatch_script_options(script), SBATCH_OPTIONS)
    opts.update(cli)
    nodes = _int("sbatch", "nodes", opts.get("nodes", 1))
    if "ntasks_per_node" in opts:
        per_node = _int("sbatch", "ntasks_per_node", opts["ntasks_per_node"])
        ntasks = per_node * nodes
    else:
        ntasks = _int("sbatch", "ntasks", opts.get("ntasks", nodes))
        if ntasks % nodes:
            die(
                "sbatch",
                f"--ntasks={ntasks} over --nodes={nodes}: uneven layouts are not emulated",
                2,
            )
        per_node = ntasks // nodes
    requeue = bool(opts.get("requeue")) and not opts.get("no_requeue")
    job = _new_job_id()
    name = str(opts.get("job_name", script.name))
    jobdir = state_dir("slurm", str(job))
    (jobdir / "job.json").write_text(
        json.dumps({"requeue": requeue, "name": name, "script": str(script), "opts": opts})
    )
    env = dict(
        os.environ,
        SLURM_JOB_ID=str(job),
        SLURM_JOBID=str(job),
        SLURM_JOB_NAME=name,
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NUM_NODES=str(nodes),
        SLURM_NTASKS=str(ntasks),
        SLURM_NPROCS=str(ntasks),
        SLURM_NTASKS_PER_NODE=str(per_node),
        SLURM_TASKS_PER_NODE=f"{per_node}(x{nodes})" if nodes > 1 else str(per_node),
        SLURM_JOB_NODELIST=",".join([HOST] * nodes),
        SLURM_NODELIST=",".join([HOST] * nodes),
        SLURM_SUBMIT_DIR=os.getcwd(),
        SLURM_SUBMIT_HOST=HOST,
        SLURMD_NODENAME=HOST,
        SLURM_NODEID="0",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_OPEN_MODE="a" if opts.get("open_mode") == "append" else "t",
    )
    if "gpus_per_node" in opts:
        gpus = _int("sbatch", "gpus_per_node", opts["gpus_per_node"])
        env.update(SLURM_GPUS_ON_NODE=str(gpus), SLURM_GPUS_PER_NODE=str(opts["gpus_per_node"]))
    if "cpus_per_task" in opts:
        env["SLURM_CPUS_PER_TASK"] = str(_int("sbatch", "cpus_per_task", opts["cpus_per_task"]))
    out_pattern = str(opts.get("output", "slurm-%j.out"))
    out_path = _expand(
        out_pattern,
        {"x": name, "j": str(job), "N": HOST, "u": os.environ.get("USER", ""), "%": "%"},
    )
    print(f"Submitted batch job {job}", flush=True)
    max_runs = int(os.environ.get("FAKE_SLURM_MAX_RUNS", "5"))
    requeue_log = jobdir / "requeue.log"
    rc = 0
    for restart in range(max_runs):
        if restart:
            env["SLURM_RESTART_COUNT"] = str(restart)
        (jobdir / "restart").write_text(str(restart))
        before = _lines(requeue_log)
        mode = "a" if (restart or opts.get("open_mode") == "append") else "w"
        with open(out_path, mode) as out:
            p = subprocess.Popen(
                ["bash", str(script), *script_args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
            (jobdir / "batch.pid").write_text(str(p.pid))
            rc = p.wait()
        if _lines(requeue_log) == before:
            return rc
        print(f"sbatch: job {job} requeued (run {restart + 1} exit code {rc})", flush=True)
    print(f"sbatch: job {job}: stopped after FAKE_SLURM_MAX_RUNS={max_runs} runs", flush=True)
    return rc


def _lines(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


SRUN_OPTIONS = {
    "--kill-on-bad-exit": ("kill_on_bad_exit", False),
    "-K": ("kill_on_bad_exit", False),
    "--label": ("label", False),
    "-l": ("label", False),
    "--output": ("output", True),
    "-o": ("output", True),
    "--ntasks": ("ntasks", True),
    "-n": ("ntasks", True),
    "--nodes": ("nodes", True),
    "-N": ("nodes", True),
    "--ntasks-per-node": ("ntasks_per_node", True),
}
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def srun(argv: list[str]) -> int:
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        die("srun", "not inside a job allocation (SLURM_JOB_ID is unset; use sbatch)")
    opts, cmd = parse_options("srun", argv, SRUN_OPTIONS)
    if not cmd:
        die("srun", "no command given", 2)
    nodes = _int("srun", "nodes", opts.get("nodes", os.environ.get("SLURM_NNODES", 1)))
    if "ntasks_per_node" in opts:
        ntasks = nodes * _int("srun", "ntasks_per_node", opts["ntasks_per_node"])
    else:
        ntasks = _int("srun", "ntasks", opts.get("ntasks", os.environ.get("SLURM_NTASKS", nodes)))
    if ntasks % nodes:
        die("srun", f"{ntasks} tasks over {nodes} nodes: uneven layouts are not emulated", 2)
    per_node = ntasks // nodes
    kill_on_bad_exit = opts.get("kill_on_bad_exit") not in (None, "0")
    jobdir = state_dir("slurm", job)
    run = (jobdir / "restart").read_text() if (jobdir / "restart").exists() else "0"
    step = len(list(jobdir.glob(f"run{run}-step*")))  # step ids restart at 0 in a requeued job
    pids_file = jobdir / f"run{run}-step{step}.pids"
    pids_file.touch()
    width = len(str(ntasks - 1))
    open_mode = "a" if os.environ.get("SLURM_OPEN_MODE") == "a" else "w"
    lock = threading.Lock()
    procs, relays, files = [], [], []
    for t in range(ntasks):
        node = t // per_node
        env = dict(
            os.environ,
            SLURM_STEP_ID=str(step),
            SLURM_STEPID=str(step),
            SLURM_PROCID=str(t),
            SLURM_LOCALID=str(t % per_node),
            SLURM_NODEID=str(node),
            SLURM_NTASKS=str(ntasks),
            SLURM_NPROCS=str(ntasks),
            SLURM_STEP_NUM_TASKS=str(ntasks),
            SLURM_STEP_NUM_NODES=str(nodes),
            SLURM_STEP_NODELIST=",".join([HOST] * nodes),
            SLURM_STEP_TASKS_PER_NODE=f"{per_node}(x{nodes})" if nodes > 1 else str(per_node),
            SLURMD_NODENAME=HOST,
        )
        if "output" in opts:
            path = _expand(
                str(opts["output"]),
                {
                    "t": str(t),
                    "n": str(node),
                    "N": HOST,
                    "j": job,
                    "J": f"{job}.{step}",
                    "s": str(step),
                    "%": "%",
                },
            )
            dest = open(path, open_mode)  # noqa: SIM115 (closed after the step)
            files.append(dest)
        else:
            dest = sys.stdout
        p = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(p)
        prefix = f"{t:>{width}}: " if opts.get("label") else ""
        r = threading.Thread(target=_relay, args=(p.stdout, dest, prefix, lock), daemon=True)
        r.start()
        relays.append(r)
    pids_file.write_text("".join(f"{t} {p.pid}\n" for t, p in enumerate(procs)))

    def forward(signum, _frame):
        for p in procs:
            _signal_task(p, signum)

    for s in FORWARDED:
        signal.signal(s, forward)

    kill_wait = float(os.environ.get("FAKE_SLURM_KILL_WAIT", "30"))
    codes: dict[int, int] = {}
    terminated_at = None
    while len(codes) < ntasks:
        for t, p in enumerate(procs):
            if t in codes or p.poll() is None:
                continue
            codes[t] = p.returncode
            if p.returncode != 0:
                what = (
                    f"Killed by signal {-p.returncode} ({signal.Signals(-p.returncode).name})"
                    if p.returncode < 0
                    else f"Exited with exit code {p.returncode}"
                )
                print(f"srun: error: {HOST}: task {t}: {what}", file=sys.stderr, flush=True)
                if kill_on_bad_exit and terminated_at is None:
                    terminated_at = time.time()
                    print(
                        f"srun: Terminating StepId={job}.{step} (--kill-on-bad-exit)",
                        file=sys.stderr,
                        flush=True,
                    )
                    for q in procs:
                        _signal_task(q, signal.SIGTERM)
        if terminated_at is not None and time.time() - terminated_at > kill_wait:
            for q in procs:
                _signal_task(q, signal.SIGKILL)
        time.sleep(0.05)
    for p in procs:  # a step's leftover processes go with it
        _signal_task(p, signal.SIGKILL, leader_exited_ok=True)
    for r in relays:
        r.join(timeout=10)
    for f in files:
        f.close()
    if terminated_at is not None:
        print(
            f"srun: step {job}.{step} ended {time.time() - terminated_at:.1f} s after its first "
            "failed task",
            file=sys.stderr,
            flush=True,
        )
    pids_file.rename(pids_file.with_suffix(".done"))
    return max(128 - c if c < 0 else c for c in codes.values())


def _signal_task(p: subprocess.Popen, sig: int, leader_exited_ok: bool = False) -> None:
    """Signals every process of a task (its process group), as slurmstepd does."""
    if p.poll() is not None and not leader_exited_ok:
        return
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _relay(stream, dest, prefix: str, lock: threading.Lock):
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        with lock:
            dest.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            dest.flush()


def scontrol(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "requeue":
        jobdir = state_dir("slurm", argv[1])
        if not (jobdir / "job.json").exists():
            die("scontrol", f"Invalid job id specified: {argv[1]}")
        if not json.loads((jobdir / "job.json").read_text())["requeue"]:
            die("scontrol", f"Requested operation is presently disabled for job {argv[1]}")
        restart = (jobdir / "restart").read_text()
        with open(jobdir / "requeue.log", "a") as f:
            f.write(f"{time.time():.3f} restart={restart}\n")
        return 0
    die("scontrol", f"{' '.join(argv)!r} is not emulated (only: requeue JOBID)", 2)


def scancel(argv: list[str]) -> int:
    opts, rest = parse_options(
        "scancel", argv, {"--signal": ("signal", True), "-s": ("signal", True)}
    )
    if len(rest) != 1 or "signal" not in opts:
        die("scancel", "only `scancel --signal=SIG JOBID` is emulated", 2)
    name = str(opts["signal"]).upper()
    sig = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    jobdir = state_dir("slurm", rest[0])
    sent = 0
    for pids in jobdir.glob("*.pids"):
        for line in pids.read_text().splitlines():
            try:
                os.killpg(int(line.split()[1]), sig)  # every process of the task
                sent += 1
            except ProcessLookupError:
                pass
    if not sent:
        die("scancel", f"job {rest[0]} has no running tasks")
    return 0


# --------------------------------------------------------------------------- Cloud TPU


def gcloud(argv: list[str]) -> int:
    if argv[:4] != ["compute", "tpus", "tpu-vm", "ssh"] or len(argv) < 5:
        die("gcloud", f"{' '.join(argv[:4])!r} is not emulated (only: compute tpus tpu-vm ssh)", 2)
    name = argv[4]
    opts, rest = parse_options(
        "gcloud",
        argv[5:],
        {
            "--zone": ("zone", True),
            "--project": ("project", True),
            "--worker": ("worker", True),
            "--command": ("command", True),
        },
    )
    if rest or "command" not in opts or "zone" not in opts:
        die("gcloud", "expected NAME --zone ZONE [--project P] [--worker W] --command CMD", 2)
    n = int(os.environ.get("FAKE_TPU_WORKERS", "2"))
    worker = str(opts.get("worker", "0"))
    workers = range(n) if worker == "all" else [int(worker)]
    extra = json.loads(os.environ.get("FAKE_TPU_ENV", "{}"))
    path = os.pathsep.join(
        [p for p in os.environ.get("FAKE_TPU_PATH", "").split(os.pathsep) if p]
        + ["/usr/bin", "/bin"]
    )
    procs = []
    for k in workers:
        home = state_dir("tpu", name, f"worker{k}")
        env = dict(
            extra,
            HOME=str(home),
            USER=os.environ.get("USER", "tpu"),
            PATH=path,
            LANG="C.UTF-8",
            TPU_WORKER_ID=str(k),
            TPU_WORKER_HOSTNAMES=",".join([HOST] * n),
        )
        procs.append(subprocess.Popen(["bash", "-c", str(opts["command"])], env=env, cwd=home))
    codes = [p.wait() for p in procs]
    bad = [c for c in codes if c != 0]
    return (128 - bad[0] if bad[0] < 0 else bad[0]) if bad else 0


# --------------------------------------------------------------------------- entry


def install(bin_dir: str) -> None:
    """Writes one executable per emulated command into ``bin_dir``."""
    d = pathlib.Path(bin_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        f = d / name
        f.write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
            f'{shlex.quote(str(pathlib.Path(__file__).resolve()))} {name} "$@"\n'
        )
        f.chmod(0o755)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "install":
        install(argv[1])
        return 0
    if not argv or argv[0] not in COMMANDS:
        die(
            "fake_cluster",
            f"usage: fake_cluster.py {{install BIN_DIR | {' | '.join(COMMANDS)}}} ...",
            2,
        )
    return globals()[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
