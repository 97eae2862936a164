#!/usr/bin/env bash
# N processes x M devices on ONE machine, talking over a loopback coordinator: the
# multi-host code path (jax.distributed, per-host data slices, cross-process
# collectives, checkpoints written from every process) without a cluster.
#
#   launch/multiprocess.sh NPROC DEVICES_PER_PROC CONFIG_FILE:VARIANT WORKDIR [--config.<field>=<value> ...]
#
#   JAXFACE_PLATFORM=cpu (default): each process gets M host CPU devices
#       (XLA_FLAGS=--xla_force_host_platform_device_count=M; CPU collectives over gloo).
#   JAXFACE_PLATFORM=gpu: process k sees GPUs k*M .. k*M+M-1 (CUDA_VISIBLE_DEVICES).
#   JAXFACE_PORT: coordinator port (default: a free port on 127.0.0.1).
#   JAXFACE_PYTHON: the interpreter (default: python3 on PATH).
#
# Every process checks that JAX formed NPROC x DEVICES_PER_PROC global devices
# (JAXFACE_EXPECTED_DEVICES) and logs a "cluster: process k of N ..." line at start.
# Logs: WORKDIR/logs/process_<k>.log (process 0 is also echoed to this terminal).
# If any process fails, the others are stopped and the exit code is the first failure's.
# SIGTERM/SIGINT to this script are forwarded to every process, so the trainer saves a
# checkpoint and writes result.json with status "preempted" (launch/babysit.py relaunches it).
set -uo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 NPROC DEVICES_PER_PROC CONFIG_FILE:VARIANT WORKDIR [--config.<field>=<value> ...]" >&2
  exit 2
fi
nproc=$1; ndev=$2; config=$3; workdir=$4; shift 4
case "$nproc$ndev" in *[!0-9]*|'') echo "$0: NPROC and DEVICES_PER_PROC must be positive integers" >&2; exit 2;; esac
[ "$nproc" -ge 1 ] && [ "$ndev" -ge 1 ] || { echo "$0: NPROC and DEVICES_PER_PROC must be >= 1" >&2; exit 2; }
platform=${JAXFACE_PLATFORM:-cpu}
python=${JAXFACE_PYTHON:-python3}
port=${JAXFACE_PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
logdir="$workdir/logs"
mkdir -p "$logdir"

pids=()
forward() {  # forward a signal to every training process, then keep waiting for them
  echo "multiprocess.sh: got $1, forwarding to ${pids[*]}" >&2
  for p in "${pids[@]}"; do kill -s "$1" "$p" 2>/dev/null; done
}
trap 'forward TERM' TERM
trap 'forward INT' INT

for ((k = 0; k < nproc; k++)); do
  env_args=(JAXFACE_COORDINATOR="127.0.0.1:$port" JAXFACE_NUM_PROCESSES="$nproc" JAXFACE_PROCESS_ID="$k"
            JAXFACE_EXPECTED_DEVICES=$((nproc * ndev)))
  if [ "$platform" = cpu ]; then
    env_args+=(JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$ndev")
  elif [ "$platform" = gpu ]; then
    env_args+=(CUDA_VISIBLE_DEVICES="$(seq -s, $((k * ndev)) $((k * ndev + ndev - 1)))")
  else
    echo "$0: JAXFACE_PLATFORM must be cpu or gpu, got '$platform'" >&2; exit 2
  fi
  env "${env_args[@]}" "$python" -m jaxface.main train --config "$config" --workdir "$workdir" "$@" \
    > "$logdir/process_$k.log" 2>&1 &
  pids+=($!)
  echo "multiprocess.sh: process $k of $nproc (pid $!, $ndev $platform devices) -> $logdir/process_$k.log"
done
tail -n +1 -f "$logdir/process_0.log" --pid="${pids[0]}" &
tailpid=$!

# Wait for all; on the first failure stop the rest (by pid), so no process hangs in a collective.
rc=0
remaining=("${pids[@]}")
while [ ${#remaining[@]} -gt 0 ]; do
  wait -n "${remaining[@]}"; st=$?
  still=()
  for p in "${remaining[@]}"; do
    if kill -0 "$p" 2>/dev/null; then still+=("$p"); fi
  done
  if [ ${#still[@]} -eq ${#remaining[@]} ]; then continue; fi  # a trapped signal woke us up
  remaining=("${still[@]+"${still[@]}"}")
  if [ $st -ne 0 ] && [ $rc -eq 0 ]; then
    rc=$st
    echo "multiprocess.sh: a process exited with $st; stopping the others; see $logdir" >&2
    for p in "${remaining[@]+"${remaining[@]}"}"; do kill -TERM "$p" 2>/dev/null; done
  fi
done
kill "$tailpid" 2>/dev/null
wait "$tailpid" 2>/dev/null
exit $rc
