#!/usr/bin/env bash
# Side-by-side speed against the PyTorch reference: digitlab's
# train_speed benchmark and the reference's two implementations (naive: the whole sequence;
# lastpos: only the last position) alternate, three rounds per config, and the ratios of the
# medians are printed. digitlab counts at its better thread count, PyTorch at 2 threads. The
# answer layout (all digits at once, d_model 128) is compared with the naive reference only
# (the last-position variant reads one position). Prints the load average with the figures:
# the machine may be shared.
# Also measured, the way a user meets it: the whole `train` process at its default threads,
# writing snapshots every 50 batches (and checkpoints, and the log), as the marginal rate
# between runs of N and 2N batches (`process=`, with its ratios), so start-up cancels out.
# Needs a Python with torch: TORCH_PYTHON (default /tmp/torch-venv/bin/python) and the
# reference script TORCH_REFERENCE (default benches/torch_reference.py). ONLY=16x1 (or 128x4,
# 512x1, answer128x4) measures that config alone.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${TORCH_PYTHON:-/tmp/torch-venv/bin/python}
reference=${TORCH_REFERENCE:-benches/torch_reference.py}
rounds=${ROUNDS:-3}
if ! "$python" -c "import torch" 2>/dev/null; then
  echo "error: $python cannot import torch; see the top of benches/torch_reference.py for how to" >&2
  echo "install it, or set TORCH_PYTHON to a Python that has it" >&2
  exit 2
fi
# --workspace: the same feature set as `cargo build --release --workspace`, so nothing is rebuilt.
cargo bench --workspace --bench train_speed --no-run 2>/dev/null
cargo build --release --workspace --bins 2>/dev/null
bench=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/train_speed-* | grep -v '\.d$' | head -1)
train=${CARGO_TARGET_DIR:-target}/release/train
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rate() { sed -n 's/.*steps_per_sec=\([0-9.]*\).*/\1/p'; }
torch_rate() {
  "$python" "$reference" --d-model "$1" --n-heads "$2" --steps "$3" --threads 2 --impl "$4" \
    --layout "$5" --digit "$6" | rate
}
ratio() { python3 -c "print(round($1/$2, 1))"; }
# Seconds the command takes, its output discarded.
seconds() {
  python3 -c 'import subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
print(time.perf_counter() - t)' "$@"
}
# Marginal steps/s of `train` (layout, d_model, heads, N) from N to 2N batches.
process_rate() {
  local args=(--d-model "$2" --n-heads "$3" --snapshot-every 50 --quiet)
  if [ "$1" = answer ]; then args+=(--layout answer --digits all); fi
  rm -rf "$scratch"/a "$scratch"/b
  local short long
  short=$(seconds "$train" "$scratch"/a "${args[@]}" --steps "$4")
  long=$(seconds "$train" "$scratch"/b "${args[@]}" --steps $((2 * $4)))
  python3 -c "print(round($4 / ($long - $short), 1))"
}
# layout, d_model, heads, steps of the step measurements, N of the process's N to 2N. Runs of
# a second or less are too short to time well on a shared host (at d_model 16 3,000 batches
# are a third of a second), and at d_model 512 the window is the default checkpoint interval
# (500 batches), so that it holds its steady share of checkpoints (38 MB each there).
for config in "prompt 128 4 600 600" "prompt 512 1 100 500" "prompt 16 1 3000 10000" "answer 128 4 200 200"; do
  set -- $config
  layout=$1 d_model=$2 heads=$3 steps=$4 process_steps=$5
  if [ "$layout" = answer ]; then digit=all name="answer${d_model}x${heads}"; else digit=0 name="${d_model}x${heads}"; fi
  if [ -n "${ONLY:-}" ] && [ "$name" != "$ONLY" ]; then continue; fi
  ours=() naive=() lastpos=() process=()
  for _ in $(seq "$rounds"); do
    naive+=("$(torch_rate "$d_model" "$heads" "$steps" naive "$layout" "$digit")")
    ours+=("$("$bench" "$name" | rate | sort -g | tail -1)")
    process+=("$(process_rate "$layout" "$d_model" "$heads" "$process_steps")")
    if [ "$layout" = prompt ]; then
      lastpos+=("$(torch_rate "$d_model" "$heads" "$steps" lastpos "$layout" "$digit")")
    fi
  done
  n=$(printf '%s\n' "${naive[@]}" | median)
  o=$(printf '%s\n' "${ours[@]}" | median)
  p=$(printf '%s\n' "${process[@]}" | median)
  line="layout=$layout d_model=$d_model n_heads=$heads torch_naive=$n digitlab=$o to_naive=$(ratio "$o" "$n")x"
  line="$line process=$p process_to_naive=$(ratio "$p" "$n")x"
  if [ "$layout" = prompt ]; then
    l=$(printf '%s\n' "${lastpos[@]}" | median)
    line="$line torch_lastpos=$l to_lastpos=$(ratio "$o" "$l")x process_to_lastpos=$(ratio "$p" "$l")x"
  fi
  echo "$line load_average=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
done
