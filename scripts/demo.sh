#!/usr/bin/env bash
# The README's main job: replay the bundled real sample bags through the node's processing
# (romav2-replay: the same pipeline as the live node), write output bags and PNG pictures.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROMAV2_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup_env.sh"
OUT="${ROMAV2_DEMO_OUT:-$ROOT/out/demo}"
SAMPLES="$ROOT/data/samples"
CACHED="$("$VENV/bin/python" -c 'from romav2_core.weights import default_cache_path as p; print(p())')"
WEIGHTS="${ROMAV2_WEIGHTS:-}"
[[ -z "$WEIGHTS" && -f "$CACHED" ]] && WEIGHTS="$CACHED"

if [[ -n "$WEIGHTS" ]]; then
  MODEL=(--weights "$WEIGHTS" --setting "${ROMAV2_SETTING:-base}")
  echo "[demo] using the official RoMa v2 weights: $WEIGHTS"
else
  MODEL=(--random-weights 0 --setting turbo)
  cat <<MSG
[demo] ======================================================================================
[demo]  No RoMa v2 weights found: running with UNTRAINED RANDOM WEIGHTS. The pictures show the
[demo]  plumbing (topics, conventions, visualisation), not the matching quality.
[demo]  To use the real model, download
[demo]    https://github.com/Parskatt/RoMaV2/releases/download/v2.0.1/romav2.0.1.pt
[demo]  to $CACHED
[demo]  (or set ROMAV2_WEIGHTS=/path/romav2.0.1.pt) and run make demo again.
[demo] ======================================================================================
MSG
fi

rm -rf "$OUT"; mkdir -p "$OUT"
run() {  # name, mode, extra args...
  local name=$1 mode=$2; shift 2
  echo "[demo] $name ($mode)"
  "$VENV/bin/romav2-replay" "$SAMPLES/$name" "$OUT/$name" --mode "$mode" "${MODEL[@]}" "$@"
  "$VENV/bin/python" "$ROOT/scripts/demo_pictures.py" "$OUT/$name" "$OUT/pictures" \
      --prefix "${name}_"
}
run motorcycle_stereo stereo
run coffee_sequence sequential --limit 2
echo "[demo] output bags: $OUT/motorcycle_stereo $OUT/coffee_sequence"
echo "[demo] pictures:    $OUT/pictures/"
