#!/usr/bin/env bash
# Cloud TPU VM pod slice: run the same command on every worker with
#   gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command=...
#
#   launch/tpu_pod.sh setup NAME ZONE                      # copy this checkout, install jaxface + jax[tpu]
#   launch/tpu_pod.sh train NAME ZONE CONFIG_FILE:VARIANT gs://BUCKET/WORKDIR [--config.<field>=<value> ...]
#   launch/tpu_pod.sh run   NAME ZONE CONFIG_FILE:VARIANT gs://BUCKET/WORKDIR [...]  # same, in the foreground
#   launch/tpu_pod.sh stop  NAME ZONE                      # SIGTERM the trainers (they checkpoint, then exit)
#   launch/tpu_pod.sh logs  NAME ZONE [WORKER]             # tail a worker's log (default worker 0)
#
# Every worker runs one process that drives its local chips. When the worker's
# environment has TPU_WORKER_HOSTNAMES (more than one worker) and TPU_WORKER_ID,
# jaxface.parallel.maybe_initialize calls jax.distributed.initialize with the first
# worker as coordinator (port 8482, or JAX_COORDINATOR_PORT), that many processes and
# that process id -- what JAX's own TPU detection derives from them; without them
# the TPU runtime forms the slice itself. Each worker logs a "cluster: process k of N ..."
# line at start-up. The workdir must be a gs:// path (or
# another filesystem all workers share): orbax writes the checkpoint from every host.
# `train` runs the trainer under nohup so it survives the ssh session (pid in
# ~/jaxface_train.pid, log in ~/jaxface_train.log on each worker); `run` keeps the ssh
# session open until every worker is done (use it under launch/babysit.py). Environment knobs:
#   JAXFACE_PROJECT  gcloud --project (default: the gcloud config's)
#   JAXFACE_REMOTE   checkout directory on the workers (default: jaxface)
#   JAXFACE_JAX_TPU  the jax[tpu] requirement (default: jax[tpu]==0.10.2)
set -euo pipefail
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 3 ] || usage
action=$1; name=$2; zone=$3; shift 3
remote=${JAXFACE_REMOTE:-jaxface}
project_args=()
[ -n "${JAXFACE_PROJECT:-}" ] && project_args=(--project "$JAXFACE_PROJECT")
here=$(cd "$(dirname "$0")/.." && pwd)

on_all() {  # run a shell command on every worker
  gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" "${project_args[@]}" --worker=all --command="$1"
}
quote() { printf '%q ' "$@"; }

case "$action" in
  setup)
    tarball=$(mktemp --suffix=.tar.gz)
    git -C "$here" ls-files -z | tar -C "$here" --null -T - -czf "$tarball"
    gcloud compute tpus tpu-vm scp "$tarball" "$name:jaxface_src.tar.gz" --zone "$zone" \
      "${project_args[@]}" --worker=all
    rm -f "$tarball"
    on_all "set -e; rm -rf $remote && mkdir -p $remote && tar -xzf jaxface_src.tar.gz -C $remote && \
      python3 -m pip install -q -U pip && python3 -m pip install -q -e ./$remote \
      '${JAXFACE_JAX_TPU:-jax[tpu]==0.10.2}' && python3 -c 'import jax; print(jax.device_count(), jax.devices()[0])'"
    ;;
  train|run)
    [ $# -ge 2 ] || usage
    config=$1; workdir=$2; shift 2
    case "$workdir" in gs://*) ;; *) echo "warning: $workdir is not gs://; all workers must share it" >&2 ;; esac
    train="python3 -m jaxface.main train $(quote --config "$config" --workdir "$workdir" "$@")"
    if [ "$action" = train ]; then
      on_all "cd $remote && nohup $train > ~/jaxface_train.log 2>&1 < /dev/null & \
        echo \$! > ~/jaxface_train.pid; echo \"worker \$(hostname): pid \$(cat ~/jaxface_train.pid)\""
    else
      on_all "set -o pipefail; cd $remote && $train 2>&1 | tee ~/jaxface_train.log"
    fi
    ;;
  stop)
    on_all "test -f ~/jaxface_train.pid && kill -TERM \$(cat ~/jaxface_train.pid) || true"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" "${project_args[@]}" --worker="${1:-0}" \
      --command="tail -n 100 -f ~/jaxface_train.log"
    ;;
  *) usage ;;
esac
