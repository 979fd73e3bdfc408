#!/usr/bin/env bash
# Side-by-side speed of `train` and the eager PyTorch reference (benches/torch_reference.py):
# the two programs alternate, three rounds per config, and the ratio of the medians is printed
# (the machine may be shared, so single figures are noisy). The reference runs with --impl
# naive; set TORCH_IMPL=lastpos for its faster variant.
#
# Needs a Python with torch: set TORCH_PYTHON (default /tmp/torch-venv/bin/python); the top of
# benches/torch_reference.py says how to make one.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${TORCH_PYTHON:-/tmp/torch-venv/bin/python}
impl=${TORCH_IMPL:-naive}
if ! "$python" -c "import torch" 2>/dev/null; then
  echo "error: $python cannot import torch; see the top of benches/torch_reference.py for how to" >&2
  echo "install it, or set TORCH_PYTHON to a Python that has it" >&2
  exit 2
fi
cargo bench --bench train_speed --no-run 2>/dev/null
bench=$(ls -t target/release/deps/train_speed-* | grep -v '\.d$' | head -1)
median() { sort -g | sed -n 2p; }
for config in "128 4 600" "512 1 100" "16 1 2000"; do
  set -- $config
  d_model=$1 heads=$2 steps=$3
  ours=() theirs=()
  for round in 1 2 3; do
    theirs+=("$("$python" benches/torch_reference.py --impl "$impl" --d-model "$d_model" \
      --n-heads "$heads" --steps "$steps" --threads 2 | sed -n 's/^steps_per_sec=//p')")
    ours+=("$("$bench" "${d_model}x${heads}" | sort -t= -k5 -g | tail -1 | sed -n 's/.*steps_per_sec=\([0-9.]*\).*/\1/p')")
  done
  t=$(printf '%s\n' "${theirs[@]}" | median)
  o=$(printf '%s\n' "${ours[@]}" | median)
  echo "d_model=$d_model n_heads=$heads torch_$impl=$t digitlab_best_threads=$o ratio=$(python3 -c "print(round($o/$t, 2))")"
done
