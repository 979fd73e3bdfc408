#!/usr/bin/env python3
"""digitlab's training step in eager PyTorch: the speed reference for `train`.

The same model, task, initialisation and optimizer as `train` with its defaults, written the way
a researcher would in PyTorch, so that `benches/compare_with_torch.sh` can put steps per second
side by side. Prints `steps_per_sec=<float>`, timed after the warm-up steps.

Install (once; PyPI's torch wheel for Linux bundles the CUDA libraries, a download of several
GB, but runs on the CPU without a GPU):

    python3 -m venv /tmp/torch-venv
    /tmp/torch-venv/bin/pip install torch numpy

Run:

    /tmp/torch-venv/bin/python benches/torch_reference.py --d-model 128 --n-heads 4 --steps 600
    /tmp/torch-venv/bin/python benches/torch_reference.py --impl lastpos --threads 1
    /tmp/torch-venv/bin/python benches/torch_reference.py --layout answer --digit all

What it computes (docs/metrics.md, "The task" and "The model"):
- Task: n-digit addition (`--n-digits`, default 5); every step draws a fresh batch of uniform
  operands a, b (the drawing is part of the timed step, as in `train`). Tokens: digits 0-9,
  `+` = 10, `=` = 11. Prompt layout `a + b =` (most significant digit first), target digit s_k
  (`--digit k`, 0 = units) read at `=`; with `--layout answer` the sum s_n ... s_0 follows,
  teacher-forced, and s_k is read at the position before it; `--digit all` (answer layout,
  naive only) trains every digit at once, the loss the mean over the n + 1 predicting positions.
- Model: one block of attention + ReLU MLP, no LayerNorm, TransformerLens names and shapes
  (W_Q: [n_heads, d_model, d_head], W_O: [n_heads, d_head, d_model], W_in: [d_model, d_mlp],
  ...), so each trained tensor has the name and shape it has in a digitlab snapshot. The
  attention and unembed biases, zero and not trained in digitlab, are left out; the MLP biases
  are trained.
- Initialisation: weights N(0, 1) / sqrt(d_model), W_U N(0, 1) / sqrt(d_vocab_out), biases 0.
- Optimizer: torch.optim.AdamW, lr 1e-3, betas (0.9, 0.98), eps 1e-8, weight decay 1.0
  (decoupled), on every trained tensor.

`--impl naive` runs attention and the MLP over the whole sequence, as TransformerLens does, and
unembeds the predicting position. `--impl lastpos` computes the same loss with the query, attention output,
MLP and unembedding at the predicting position only (keys and values over every position up to
it); on this model it is usually the faster of the two.
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

PLUS, EQUALS = 10, 11
D_VOCAB = 12


class Attention(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        d_head = d_model // n_heads
        self.W_Q = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_K = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_V = nn.Parameter(torch.empty(n_heads, d_model, d_head))
        self.W_O = nn.Parameter(torch.empty(n_heads, d_head, d_model))
        self.scale = 1.0 / math.sqrt(d_head)

    def forward(self, x):
        """x: [batch, pos, d_model] -> [batch, pos, d_model], causal."""
        q = torch.einsum("bpd,hde->bhpe", x, self.W_Q)
        k = torch.einsum("bpd,hde->bhpe", x, self.W_K)
        v = torch.einsum("bpd,hde->bhpe", x, self.W_V)
        scores = q @ k.transpose(-1, -2) * self.scale
        n_ctx = x.shape[1]
        future = torch.ones(n_ctx, n_ctx, dtype=torch.bool).triu(1)
        pattern = scores.masked_fill(future, float("-inf")).softmax(-1)
        z = pattern @ v  # [batch, head, pos, d_head]
        return torch.einsum("bhpe,hed->bpd", z, self.W_O)

    def forward_at_last(self, x):
        """The output at the last position of x only: [batch, d_model]."""
        q = torch.einsum("bd,hde->bhe", x[:, -1], self.W_Q)
        k = torch.einsum("bpd,hde->bhpe", x, self.W_K)
        v = torch.einsum("bpd,hde->bhpe", x, self.W_V)
        # The last query sees every key: no mask.
        pattern = (torch.einsum("bhe,bhpe->bhp", q, k) * self.scale).softmax(-1)
        z = torch.einsum("bhp,bhpe->bhe", pattern, v)
        return torch.einsum("bhe,hed->bd", z, self.W_O)


class Mlp(nn.Module):
    def __init__(self, d_model, d_mlp):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        return F.relu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, d_model, n_heads, d_mlp):
        super().__init__()
        self.attn = Attention(d_model, n_heads)
        self.mlp = Mlp(d_model, d_mlp)


class Embed(nn.Module):
    def __init__(self, d_vocab, d_model):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(d_vocab, d_model))


class PosEmbed(nn.Module):
    def __init__(self, n_ctx, d_model):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(n_ctx, d_model))


class Unembed(nn.Module):
    def __init__(self, d_model, d_vocab_out):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(d_model, d_vocab_out))

    def forward(self, x):
        return x @ self.W_U


class Transformer(nn.Module):
    """One attention + MLP block, no LayerNorm; parameter names as in TransformerLens."""

    def __init__(self, d_model, n_heads, d_mlp, n_ctx, d_vocab_out, generator):
        super().__init__()
        self.embed = Embed(D_VOCAB, d_model)
        self.pos_embed = PosEmbed(n_ctx, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, d_mlp)])
        self.unembed = Unembed(d_model, d_vocab_out)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.rsplit(".", 1)[-1].startswith("W_"):
                    std = 1.0 / math.sqrt(d_vocab_out if name == "unembed.W_U" else d_model)
                    p.copy_(torch.randn(p.shape, generator=generator) * std)

    def logits_at(self, tokens, position, impl):
        """Logits at `position` (an int, or a list of positions with `naive`) of every example:
        [batch, d_vocab_out], or [batch, positions, d_vocab_out]."""
        block = self.blocks[0]
        if impl == "lastpos":
            # Later positions cannot influence this one (causal attention): drop them.
            tokens = tokens[:, : position + 1]
        n_ctx = tokens.shape[1]
        resid = self.embed.W_E[tokens] + self.pos_embed.W_pos[:n_ctx]
        if impl == "lastpos":
            resid = resid[:, -1] + block.attn.forward_at_last(resid)
            resid = resid + block.mlp(resid)
            return self.unembed(resid)
        resid = resid + block.attn(resid)
        resid = resid + block.mlp(resid)
        return self.unembed(resid[:, position])


def training_batch(batch_size, n_digits, layout, digit, generator):
    """Tokens [batch, n_ctx] of uniform n-digit a + b, and the target digit s_digit (every
    digit, [batch, n_digits + 1] s_0 first, for `digit == "all"`)."""
    a_digits = torch.randint(0, 10, (batch_size, n_digits), generator=generator)
    b_digits = torch.randint(0, 10, (batch_size, n_digits), generator=generator)
    place = 10 ** torch.arange(n_digits - 1, -1, -1)  # most significant first
    total = (a_digits * place).sum(1) + (b_digits * place).sum(1)
    column = lambda value: torch.full((batch_size, 1), value, dtype=torch.long)
    parts = [a_digits, column(PLUS), b_digits, column(EQUALS)]
    if layout == "answer":
        parts.append((total[:, None] // 10 ** torch.arange(n_digits, -1, -1)) % 10)
    if digit == "all":
        return torch.cat(parts, 1), (total[:, None] // 10 ** torch.arange(n_digits + 1)) % 10
    return torch.cat(parts, 1), (total // 10**digit) % 10


def predicting_position(n_digits, layout, digit):
    """The position whose logits predict s_digit: `=` in the prompt layout; in the answer
    layout the position just before s_digit (the sum is written s_n first)."""
    equals = 2 * n_digits + 1
    return equals if layout == "prompt" else equals + (n_digits - digit)


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Prints steps_per_sec=<float> over the steps after the warm-up.",
    )
    p.add_argument("--impl", choices=["naive", "lastpos"], default="naive",
                   help="naive: the whole sequence; lastpos: only the predicting position's query")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-mlp", type=int, help="default 4 x d_model")
    p.add_argument("--d-vocab-out", type=int, default=D_VOCAB)
    p.add_argument("--n-digits", type=int, default=5, help="operand length n, 1 to 9")
    p.add_argument("--layout", choices=["prompt", "answer"], default="prompt")
    p.add_argument("--digit", default="0",
                   help="the digit s_k to train (0 = units), or `all` (answer layout, naive)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=600, help="optimizer steps, warm-up included")
    p.add_argument("--warmup-steps", type=int, default=20, help="steps before timing starts")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    problems = []
    if not 1 <= args.n_digits <= 9:
        problems.append(f"--n-digits must be 1 to 9, got {args.n_digits}")
    if args.digit == "all":
        if args.layout != "answer" or args.impl != "naive":
            problems.append("--digit all needs --layout answer and --impl naive")
    elif not args.digit.isdigit() or not 0 <= int(args.digit) <= args.n_digits:
        problems.append(f"--digit {args.digit} does not exist: a {args.n_digits}-digit sum has "
                        f"digits 0 to {args.n_digits}, or `all`")
    else:
        args.digit = int(args.digit)
    if args.d_model < 1 or args.n_heads < 1 or args.d_model % args.n_heads:
        problems.append(f"--d-model {args.d_model} must be a positive multiple of --n-heads "
                        f"{args.n_heads}")
    if args.d_vocab_out < 10:
        problems.append("--d-vocab-out must be at least 10 (the ten digits)")
    if min(args.batch_size, args.threads) < 1 or args.steps <= args.warmup_steps or args.warmup_steps < 0:
        problems.append("--batch-size and --threads must be at least 1, and --steps above "
                        "--warmup-steps >= 0")
    if problems:
        p.error("; ".join(problems))  # exit status 2
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    n = args.n_digits
    n_ctx = 2 * n + 2 if args.layout == "prompt" else 3 * n + 3
    if args.digit == "all":
        position = [predicting_position(n, args.layout, k) for k in range(n + 1)]
    else:
        position = predicting_position(n, args.layout, args.digit)
    init = torch.Generator().manual_seed(args.seed)
    batches = torch.Generator().manual_seed(args.seed + 1)
    model = Transformer(args.d_model, args.n_heads, args.d_mlp or 4 * args.d_model, n_ctx,
                        args.d_vocab_out, init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
                                  weight_decay=args.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"impl={args.impl} layout={args.layout} n_digits={n} digit={args.digit} "
          f"d_model={args.d_model} n_heads={args.n_heads} batch_size={args.batch_size} "
          f"threads={torch.get_num_threads()} trained_params={n_params}", flush=True)

    losses = []
    for step in range(args.steps):
        if step == args.warmup_steps:
            start = time.perf_counter()
        tokens, target = training_batch(args.batch_size, n, args.layout, args.digit, batches)
        logits = model.logits_at(tokens, position, args.impl)
        loss = F.cross_entropy(logits.reshape(-1, args.d_vocab_out), target.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    seconds = time.perf_counter() - start
    print(f"loss_first={losses[0].item():.4f} loss_last={losses[-1].item():.4f}")
    print(f"steps_per_sec={(args.steps - args.warmup_steps) / seconds:.2f}")


if __name__ == "__main__":
    main()
