#!/usr/bin/env bash
# One host, every local device: train a config, resuming from WORKDIR's latest checkpoint.
#   launch/local.sh configs/lmle.py:bce /tmp/jaxface/lmle_bce [--config.<field>=<value> ...]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG_FILE:VARIANT WORKDIR [--config.<field>=<value> ...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
exec jaxface train --config "$config" --workdir "$workdir" "$@"
