#!/usr/bin/env bash
# Run the test suite (arguments go to pytest) with DDS confined to this machine:
# a private network namespace holding only `lo`, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a
# non-default ROS_DOMAIN_ID. Fast DDS shared-memory leftovers are removed afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROMAV2_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-77}"
[[ "$ROS_DOMAIN_ID" == 0 ]] && { echo "ROS_DOMAIN_ID must not be the default 0" >&2; exit 2; }
export PYTHONUNBUFFERED=1

clean_shm() {
  "$VENV/bin/fastdds" shm clean >/dev/null 2>&1 || true
  rm -f /dev/shm/lttng-ust-wait-* 2>/dev/null || true
}
trap clean_shm EXIT

# The DDS tests' guard (test/dds_guard.py) fails, rather than skips, when this confinement is
# not in place, so CI never skips them silently.
if unshare --net true 2>/dev/null; then
  export ROMAV2_TEST_CONFINEMENT=netns
  # shellcheck disable=SC2016
  unshare --net bash -c 'ip link set lo up && exec "$0" -m pytest "$@"' "$VENV/bin/python" "$@"
else
  echo "[tests] cannot create a network namespace (needs root / user namespaces);" \
       "running with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST only" >&2
  export ROMAV2_TEST_CONFINEMENT=localhost
  "$VENV/bin/python" -m pytest "$@"
fi
