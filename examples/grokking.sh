#!/bin/sh
# The main run of Nanda et al., "Progress measures for grokking via mechanistic
# interpretability" (2023), as one command: addition mod 113 on 30% of the pairs, full batch,
# one layer (d_model 128, 4 heads, d_mlp 512), AdamW lr 1e-3, weight decay 1, betas 0.9/0.98;
# then its progress measures and phases (analyze grokking).
#
#   examples/grokking.sh [RUN_DIR] [EPOCHS]      # defaults: runs/grokking 20000
#
# Builds the release binaries first (into $CARGO_TARGET_DIR, default target/), with the
# workspace's feature set, so that benchmarks and tests built with --workspace share them.
# 20,000 epochs: the run has grokked by about 10,400 and its weights stop shrinking by about
# 15,000 (about 13 minutes on a 2-core machine; the paper trains 25,000 to 40,000).
set -eu
run=${1:-runs/grokking}
epochs=${2:-20000}
cargo build --release --locked --workspace --bins
bin=${CARGO_TARGET_DIR:-target}/release
"$bin/train" --task modp --p 113 --train-fraction 0.3 --seed 0 \
    --d-model 128 --n-heads 4 --d-mlp 512 \
    --lr 1e-3 --weight-decay 1 --beta1 0.9 --beta2 0.98 \
    --steps "$epochs" --eval-every 100 --snapshot-every 200 --checkpoint-every 2000 \
    "$run"
"$bin/analyze" grokking "$run"
