#!/usr/bin/env bash
# Side-by-side speed against the PyTorch reference: digitlab's
# train_speed benchmark and the reference's two implementations (naive: the whole sequence;
# lastpos: only the last position) alternate, three rounds per config, and the ratios of the
# medians are printed. digitlab counts at its better thread count, PyTorch at 2 threads.
# Needs a Python with torch: TORCH_PYTHON (default /tmp/torch-venv/bin/python) and the
# reference script TORCH_REFERENCE (default benches/torch_reference.py).
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
cargo bench --bench train_speed --no-run 2>/dev/null
bench=$(ls -t target/release/deps/train_speed-* | grep -v '\.d$' | head -1)
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rate() { sed -n 's/.*steps_per_sec=\([0-9.]*\).*/\1/p'; }
torch_rate() {
  "$python" "$reference" --d-model "$1" --n-heads "$2" --steps "$3" --threads 2 --impl "$4" | rate
}
for config in "128 4 600" "512 1 100" "16 1 3000"; do
  set -- $config
  d_model=$1 heads=$2 steps=$3
  ours=() naive=() lastpos=()
  for _ in $(seq "$rounds"); do
    naive+=("$(torch_rate "$d_model" "$heads" "$steps" naive)")
    ours+=("$("$bench" "${d_model}x${heads}" | rate | sort -g | tail -1)")
    lastpos+=("$(torch_rate "$d_model" "$heads" "$steps" lastpos)")
  done
  n=$(printf '%s\n' "${naive[@]}" | median)
  l=$(printf '%s\n' "${lastpos[@]}" | median)
  o=$(printf '%s\n' "${ours[@]}" | median)
  echo "d_model=$d_model n_heads=$heads torch_naive=$n torch_lastpos=$l digitlab=$o" \
    "to_naive=$(python3 -c "print(round($o/$n, 1))")x to_lastpos=$(python3 -c "print(round($o/$l, 1))")x"
done
