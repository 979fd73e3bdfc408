#!/usr/bin/env bash
# Side-by-side speed against the PyTorch reference (../shared/bench/torch_ref_train.py), as the
# training issue asks: the two programs alternate, three rounds per config, and the ratio of
# the medians is printed. Needs a Python with torch: set TORCH_PYTHON (default
# /tmp/torch-venv/bin/python; see ../shared/bench/README.md for how to make it).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${TORCH_PYTHON:-/tmp/torch-venv/bin/python}
reference=${TORCH_REFERENCE:-../shared/bench/torch_ref_train.py}
cargo bench --bench train_speed --no-run 2>/dev/null
bench=$(ls -t target/release/deps/train_speed-* | grep -v '\.d$' | head -1)
median() { sort -g | sed -n 2p; }
for config in "128 4 600" "512 1 100" "16 1 2000"; do
  set -- $config
  d_model=$1 heads=$2 steps=$3
  ours=() theirs=()
  for round in 1 2 3; do
    theirs+=("$("$python" "$reference" --d-model "$d_model" --n-heads "$heads" --steps "$steps" --threads 2 \
      | sed -n 's/.*steps_per_sec=\([0-9.]*\).*/\1/p')")
    ours+=("$("$bench" "${d_model}x${heads}" | sort -t= -k5 -g | tail -1 | sed -n 's/.*steps_per_sec=\([0-9.]*\).*/\1/p')")
  done
  t=$(printf '%s\n' "${theirs[@]}" | median)
  o=$(printf '%s\n' "${ours[@]}" | median)
  echo "d_model=$d_model n_heads=$heads torch_naive=$t digitlab_best_threads=$o ratio=$(python3 -c "print(round($o/$t, 2))")"
done
