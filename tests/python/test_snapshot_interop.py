"""A run directory as a Python user sees it, with numpy, safetensors, zstandard, polars and
pyarrow only (no torch): snapshots decompress to plain safetensors files with the
TransformerLens names and shapes (docs/metrics.md, "The model") and the metadata batch /
config_hash; the manifest's sizes and sha256 hold; a float64 numpy forward pass written here matches the logits
the Rust model prints (examples/dump_logits.rs) to 1e-5; train_log.parquet reads with polars
and pyarrow, one row per batch.

Needs the `train` binary and the `dump_logits` example built in the debug profile (which
`cargo test -p digitlab` does, or `cargo build -p digitlab --bin train --example dump_logits`);
their folder is $DIGITLAB_TARGET_DIR/debug, by default target/debug of the repository.

Loading a snapshot into TransformerLens (not imported here; strict=False because TransformerLens
also keeps its attention mask and IGNORE constant as buffers, which the file does not hold):

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    m = json.load(open("runs/x/config.json"))["model"]
    cfg = HookedTransformerConfig(n_layers=m["n_layers"], d_model=m["d_model"], n_heads=m["n_heads"], d_head=m["d_model"] // m["n_heads"], d_mlp=m["d_mlp"], d_vocab=m["d_vocab"], d_vocab_out=m["d_vocab_out"], n_ctx=m["n_ctx"], act_fn="relu", normalization_type=None)
    state = safetensors.torch.load(zstandard.ZstdDecompressor().decompress(open("runs/x/snapshots/batch-000050.safetensors.zst", "rb").read()))
    model = HookedTransformer(cfg); model.load_state_dict(state, strict=False)
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import safetensors.numpy
import zstandard

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("DIGITLAB_TARGET_DIR", ROOT / "target"))
TRAIN = TARGET / "debug" / "train"
DUMP_LOGITS = TARGET / "debug" / "examples" / "dump_logits"

# (name, options): a default-shaped small model, and a 2-layer answer-layout one.
RUNS = [
    ("prompt", ["--d-model", "16", "--n-heads", "2", "--steps", "30", "--snapshot-every", "10"]),
    (
        "answer-2-layers",
        ["--d-model", "8", "--n-heads", "4", "--n-layers", "2", "--n-digits", "3", "--layout", "answer",
         "--digits", "all", "--steps", "30", "--snapshot-every", "10"],
    ),
]


def binary(path):
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build -p digitlab --bin train --example dump_logits` first")
    return str(path)


@pytest.fixture(scope="module", params=RUNS, ids=[name for name, _ in RUNS])
def run_dir(request, tmp_path_factory):
    name, options = request.param
    out = tmp_path_factory.mktemp("runs") / name
    subprocess.run([binary(TRAIN), *options, "-q", str(out)], check=True, capture_output=True, timeout=600)
    return out


def load_json(path):
    return json.loads(Path(path).read_text())


def expected_shapes(m):
    """Spec section 2: every tensor name and shape of the state dict."""
    d, h, mlp = m["d_model"], m["n_heads"], m["d_mlp"]
    dh = d // h
    shapes = {"embed.W_E": (m["d_vocab"], d), "pos_embed.W_pos": (m["n_ctx"], d),
              "unembed.W_U": (d, m["d_vocab_out"]), "unembed.b_U": (m["d_vocab_out"],)}
    for l in range(m["n_layers"]):
        b = f"blocks.{l}."
        for w in ("W_Q", "W_K", "W_V"):
            shapes[b + "attn." + w] = (h, d, dh)
        shapes[b + "attn.W_O"] = (h, dh, d)
        for w in ("b_Q", "b_K", "b_V"):
            shapes[b + "attn." + w] = (h, dh)
        shapes[b + "attn.b_O"] = (d,)
        shapes[b + "mlp.W_in"] = (d, mlp)
        shapes[b + "mlp.b_in"] = (mlp,)
        shapes[b + "mlp.W_out"] = (mlp, d)
        shapes[b + "mlp.b_out"] = (d,)
    return shapes


def decompress(run, entry):
    return zstandard.ZstdDecompressor().decompress((run / entry["file"]).read_bytes())


def safetensors_metadata(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]).get("__metadata__", {})


class Raw(str):
    """A JSON number kept as the text Rust wrote (so that 1e-8 stays `1e-8`)."""


def canonical(value):
    """Compact JSON with sorted keys, numbers as written: what digitlab hashes."""
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + canonical(value[k]) for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, Raw):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def config_hash(run):
    config = json.loads((run / "config.json").read_text(), parse_float=Raw, parse_int=Raw)
    # The hash identifies the trajectory, whatever its length (`steps`) and whichever kernel
    # is recorded as having computed it (`kernel`).
    config.pop("steps")
    config.pop("kernel", None)
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def test_snapshots_are_plain_safetensors_with_spec_names_shapes_and_metadata(run_dir):
    manifest = load_json(run_dir / "manifest.json")
    model = load_json(run_dir / "config.json")["model"]
    shapes = expected_shapes(model)
    assert [e["batch"] for e in manifest["snapshots"]] == [0, 10, 20, 30]
    previous = None
    for entry in manifest["snapshots"]:
        raw = decompress(run_dir, entry)
        assert len(raw) == entry["raw_bytes"]
        assert (run_dir / entry["file"]).stat().st_size == entry["compressed_bytes"]
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"]
        tensors = safetensors.numpy.load(raw)
        assert {name: t.shape for name, t in tensors.items()} == shapes
        assert all(t.dtype == np.float32 for t in tensors.values())
        meta = safetensors_metadata(raw)
        assert meta["batch"] == str(entry["batch"])
        assert meta["config_hash"] == config_hash(run_dir)
        # Untrained biases stay zero; trained weights move between snapshots.
        for name, t in tensors.items():
            if ".attn.b_" in name or name == "unembed.b_U":
                assert not t.any(), name
        if previous is not None:
            assert not np.array_equal(previous["embed.W_E"], tensors["embed.W_E"])
        previous = tensors


@pytest.mark.skipif(shutil.which("zstd") is None, reason="no zstd command line")
def test_the_zstd_command_line_decompresses_a_snapshot(run_dir, tmp_path):
    entry = load_json(run_dir / "manifest.json")["snapshots"][-1]
    out = tmp_path / "snapshot.safetensors"
    subprocess.run(["zstd", "-q", "-d", str(run_dir / entry["file"]), "-o", str(out)], check=True, timeout=60)
    assert out.read_bytes() == decompress(run_dir, entry)


def numpy_forward(sd, m, tokens):
    """Spec section 2 in float64: embeddings, causal attention scaled by 1/sqrt(d_head), ReLU MLP,
    unembedding; no LayerNorm. tokens [batch, pos] -> logits [batch, pos, d_vocab_out]."""
    w = {k: v.astype(np.float64) for k, v in sd.items()}
    t = tokens.shape[1]
    d_head = m["d_model"] // m["n_heads"]
    x = w["embed.W_E"][tokens] + w["pos_embed.W_pos"][:t]
    above = np.triu(np.ones((t, t), dtype=bool), k=1)
    for l in range(m["n_layers"]):
        p = f"blocks.{l}."
        q, k, v = (np.einsum("bpd,hde->bphe", x, w[p + "attn.W_" + n]) + w[p + "attn.b_" + n] for n in "QKV")
        scores = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(d_head)
        scores = np.where(above, -np.inf, scores)
        pattern = np.exp(scores - scores.max(axis=-1, keepdims=True))
        pattern /= pattern.sum(axis=-1, keepdims=True)
        z = np.einsum("bhqk,bkhe->bqhe", pattern, v)
        x = x + np.einsum("bqhe,hed->bqd", z, w[p + "attn.W_O"]) + w[p + "attn.b_O"]
        post = np.maximum(x @ w[p + "mlp.W_in"] + w[p + "mlp.b_in"], 0.0)
        x = x + post @ w[p + "mlp.W_out"] + w[p + "mlp.b_out"]
    return x @ w["unembed.W_U"] + w["unembed.b_U"]


def check_tokens(tokens, task):
    """The token layout (docs/metrics.md, "The task"): a + b = (answer)."""
    n = task["n_digits"]
    assert tokens.shape[1] == (2 * n + 2 if task["layout"] == "prompt" else 3 * n + 3)
    for row in tokens:
        assert row[n] == 10 and row[2 * n + 1] == 11
        a = int("".join(map(str, row[:n])))
        b = int("".join(map(str, row[n + 1:2 * n + 1])))
        if task["layout"] == "answer":
            assert int("".join(map(str, row[2 * n + 2:]))) == a + b


@pytest.mark.parametrize("batch", [0, 30])
def test_numpy_forward_matches_the_rust_logits(run_dir, batch):
    config = load_json(run_dir / "config.json")
    manifest = load_json(run_dir / "manifest.json")
    entry = next(e for e in manifest["snapshots"] if e["batch"] == batch)
    sd = safetensors.numpy.load(decompress(run_dir, entry))
    out = subprocess.run([binary(DUMP_LOGITS), str(run_dir), str(batch)], check=True, capture_output=True,
                         timeout=300)
    dumped = json.loads(out.stdout)
    assert dumped["batch"] == batch
    tokens = np.array(dumped["tokens"], dtype=np.int64)
    rust = np.array(dumped["logits"], dtype=np.float64)
    assert tokens.shape == (64, config["model"]["n_ctx"])
    check_tokens(tokens, config["task"])
    ours = numpy_forward(sd, config["model"], tokens)
    assert rust.shape == ours.shape == (64, tokens.shape[1], config["model"]["d_vocab_out"])
    err = np.abs(ours - rust).max() / np.abs(ours).max()
    assert err < 1e-5, f"relative error {err}"


def test_train_log_has_one_row_per_batch(run_dir):
    config = load_json(run_dir / "config.json")
    path = run_dir / "train_log.parquet"
    df = pl.read_parquet(path)
    assert df["batch"].to_list() == list(range(30))
    assert df.schema["batch"] == pl.Int64 and df.schema["loss"] == pl.Float32
    assert df["loss"].is_finite().all()
    for k in config["task"]["targets"]:
        assert f"loss_digit_{k}" in df.columns
    for column in ("grad_norm", "lr", "logsumexp_mean", "logsumexp_max", "saturated_fraction",
                   "grad_norm/embed.W_E", "weight_norm/blocks.0.mlp.W_in", "update_norm/unembed.W_U"):
        assert column in df.columns, column
    assert "grad_norm/blocks.0.attn.b_Q" not in df.columns, "untrained tensors have no norms"
    table = pq.read_table(path)
    assert table.num_rows == 30
    assert table.column("batch").to_pylist() == list(range(30))
    assert table.column("loss").to_pylist() == df["loss"].to_list()
