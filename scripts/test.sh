#!/usr/bin/env bash
# The whole test suite, as one command that works on a fresh clone: `scripts/test.sh`.
#
# Needs only the Rust toolchain and python3 with its venv module. Each step below is one function,
# called in order from `main` at the bottom; a step that sets something up (Python packages,
# services the tests talk to) comes before the tests that need it. Every test step runs even
# when an earlier one failed, so one run shows all failures; the exit status is non-zero if any
# step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

# The Python test packages live in a virtual environment inside the build folder: no root or
# system pip needed, nothing written outside the clone, and `cargo clean` removes it too.
VENV=${DIGITLAB_TEST_VENV:-target/python-test-env}
REQUIREMENTS=tests/python/requirements.txt
failed=()

section() { printf '\n== %s ==\n' "$1"; }

# --- Python packages for tests/python ---------------------------------------------------------
# Installed once; again only when the requirements file changes (a copy of it in the
# environment records what was installed), so repeated runs need no network.
setup_python() {
  section "Python packages ($REQUIREMENTS -> $VENV)"
  local python="$VENV/bin/python"
  if [[ ! -x $python ]]; then
    if ! python3 -m venv "$VENV"; then
      echo "error: could not create a Python virtual environment in $VENV." >&2
      echo "On Debian or Ubuntu install the venv module (apt-get install python3-venv), or set" >&2
      echo "DIGITLAB_TEST_VENV to an existing environment, then run scripts/test.sh again." >&2
      return 1
    fi
  fi
  if cmp -s "$REQUIREMENTS" "$VENV/installed-requirements.txt"; then
    echo "up to date"
    return 0
  fi
  "$python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" || {
    echo "error: pip could not install $REQUIREMENTS into $VENV (see above)." >&2
    return 1
  }
  cp "$REQUIREMENTS" "$VENV/installed-requirements.txt"
  echo "installed"
}

# --- System packages: a real headless Chromium for the report tests, a real SLURM for sweeps -
# From Debian's packages, because the browser tests drive a real browser and the sweep's SLURM
# test submits to a real single-node cluster (it starts munged, slurmctld and slurmd itself,
# with tests/slurm/cluster.sh, and stops them when it ends), not mocks. Without
# root or apt-get the step says so, and the tests that need the browser report themselves as
# skipped with the reason.
SYSTEM_PACKAGES=(chromium chromium-driver fonts-dejavu-core slurm-wlm munge)
setup_system_packages() {
  section "system packages (${SYSTEM_PACKAGES[*]})"
  if dpkg -s "${SYSTEM_PACKAGES[@]}" >/dev/null 2>&1; then
    echo "up to date"
    return 0
  fi
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "skipped: installing ${SYSTEM_PACKAGES[*]} needs root and apt-get; the tests that need them will say they were skipped"
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq "${SYSTEM_PACKAGES[@]}" >/dev/null; }; then
    echo "warning: apt-get could not install ${SYSTEM_PACKAGES[*]}; the tests that need them will say they were skipped"
  fi
  return 0
}

# --- Rust tests (also builds the debug binaries the Python tests run) ------------------------
rust_tests() {
  section "cargo test --workspace"
  cargo test --workspace --no-fail-fast
}

# --- Python tests: reading the run directory with numpy, safetensors, polars, pyarrow --------
python_tests() {
  section "pytest tests/python"
  "$VENV/bin/python" -m pytest -q -rs tests/python
}

run() {
  "$@" || failed+=("$1")
}

main() {
  local python_ready=1
  setup_system_packages
  setup_python || { failed+=(setup_python); python_ready=0; }
  run rust_tests
  if ((python_ready)); then
    run python_tests
  fi
  section "summary"
  if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    exit 1
  fi
  echo "all tests passed"
}

main
