#!/usr/bin/env python
"""An independent PyTorch GPT-2 that dumps llm.c reference files: model, debug state, step losses.

This is a check on numbagpt, so it shares no code with it: the model, the file readers and writers
are written here (torch and numpy only; torch is a dev-only dependency, `pip install torch==2.13.0`).

Model (GPT-2, as in llm.c and nanoGPT's model.py): token + position embeddings; L blocks of
  x = x + proj(attn(LN1(x)))  with a fused qkv Linear C->3C (q, k, v order), scale 1/sqrt(C/NH),
                              causal mask, written out explicitly (q@k^T*scale, masked_fill -inf,
                              softmax, @v; no scaled_dot_product_attention: its fused kernels differ);
  x = x + fcproj(GELU_tanh(fc(LN2(x))));
final LayerNorm; LM head tied to wte. LayerNorm eps is 1e-5. Logits are over the padded vocab Vp (wte
has Vp rows, rows V..Vp-1 zero); the loss is the mean cross-entropy over the first V columns only, so
the padded columns get zero gradient.

The model is built from llm.c's 16 tensors, stacked over layers as in the model file (`PARAM_NAMES`,
`param_shapes`); each block holds its own layer's slices as parameters with llm.c's names (indexing
stacked parameters would zero-fill a whole stacked gradient per layer in backward), and
`GPT.llmc_tensors` stacks parameters or gradients back into the model-file layout.

From-scratch init (llm.c's), drawn from torch.manual_seed(seed) in llm.c's tensor order: weights
normal(0, 0.02); attprojw and fcprojw normal(0, 0.02/sqrt(2L)); wte normal(0, 0.02) on its first V
rows, rows V..Vp-1 zero; wpe normal(0, 0.02) (the 0.02 variant, not 0.01); biases 0; LayerNorm weights
1 and biases 0. The random stream is not llm.c's C RNG: the model file carries the weights.

Outputs, in --out-dir:
  NAME_model.bin        llm.c model file v3 (float32): header magic 20240326, version 3,
                        maxT, V, L, NH, C, Vp; then the 16 tensors, PyTorch Linear layout (out, in).
  NAME_debug_state.bin  magic 20240327 version 2, B, T; x int32 (B,T); y int32 (B,T);
                        logits float32 (B,T,V) unpadded; loss float32; grads of the 16 tensors
                        (float32, model-file order and shapes, wte grad with Vp rows).
  NAME_losses.txt       the loss before each of --steps AdamW updates on that same batch ("%.8f").
All of it is for the INITIAL parameters; AdamW is torch.optim.AdamW(lr=1e-4, betas=(0.9, 0.999),
eps=1e-8, weight_decay=0.01) on ALL parameters (llm.c's test settings), no gradient clipping.

The batch is the first B*T+1 tokens of an llm.c uint16 shard (--data), or B*T+1 tokens drawn
uniformly from [0, V) by numpy.random.default_rng(seed); x = the first B*T, y = the next B*T.

--dtype float64 computes (forward, backward and AdamW) in float64 from the same float32 weights and
writes the results rounded to float32: a reference free of its own float32 rounding.

Examples:
  python dev/pytorch_reference.py --preset d12 -B 4 -T 64 --seed 1337 --threads 2 --out-dir /tmp/d12ref --name d12
  python dev/pytorch_reference.py --model-in gpt2_124M.bin --data tinyshakespeare_val.bin -B 4 -T 64 \\
      --out-dir /tmp/ref --name gpt2_124M
"""
import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ModuleNotFoundError as e:
    raise SystemExit(f"pytorch_reference.py: needs PyTorch ({e}): pip install torch==2.13.0 (the README's "
                     f"version)") from None

MODEL_MAGIC = 20240326
STATE_MAGIC = 20240327
SHARD_MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
GPT2_VOCAB = 50257

PARAM_NAMES = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")

# (L, NH, C, maxT), GPT-2 sizes plus the 7.3M "tiny" model.
PRESETS = {
    "tiny": (4, 4, 128, 256),
    "d12": (12, 12, 768, 1024),
    "d24": (24, 16, 1024, 1024),
    "d36": (36, 20, 1280, 1024),
    "d48": (48, 25, 1600, 1024),
}


@dataclass(frozen=True)
class Config:
    max_seq_len: int   # maxT
    vocab_size: int    # V
    num_layers: int    # L
    num_heads: int     # NH
    channels: int      # C
    padded_vocab_size: int = 0  # Vp; 0 = V rounded up to a multiple of 128

    def __post_init__(self):
        if self.padded_vocab_size == 0:
            object.__setattr__(self, "padded_vocab_size", -(-self.vocab_size // 128) * 128)
        sizes = (self.max_seq_len, self.vocab_size, self.num_layers, self.num_heads, self.channels)
        if min(sizes) <= 0 or self.channels % self.num_heads or self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"not a GPT-2 shape (sizes > 0, NH divides C, Vp >= V): {self.describe()}")

    def describe(self):
        return (f"L={self.num_layers} NH={self.num_heads} C={self.channels} maxT={self.max_seq_len} "
                f"V={self.vocab_size} Vp={self.padded_vocab_size}")


def param_shapes(cfg):
    """[(name, shape)] of the 16 parameter tensors in llm.c (model file) order."""
    Vp, C, maxT, L = cfg.padded_vocab_size, cfg.channels, cfg.max_seq_len, cfg.num_layers
    return [("wte", (Vp, C)), ("wpe", (maxT, C)), ("ln1w", (L, C)), ("ln1b", (L, C)),
            ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)), ("attprojw", (L, C, C)), ("attprojb", (L, C)),
            ("ln2w", (L, C)), ("ln2b", (L, C)), ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)),
            ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)), ("lnfw", (C,)), ("lnfb", (C,))]


def num_params(cfg):
    return sum(math.prod(shape) for _, shape in param_shapes(cfg))


# ----------------------------------------------------------------------------------------------
# init and the model

def init_params(cfg, seed):
    """{name: float32 tensor}: llm.c's from-scratch init (see the module docstring), torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    V, L = cfg.vocab_size, cfg.num_layers
    residual_std = 0.02 / math.sqrt(2 * L)
    params = {}
    for name, shape in param_shapes(cfg):
        t = torch.zeros(shape, dtype=torch.float32)
        if name == "wte":
            t[:V].normal_(0.0, 0.02)              # padded rows V..Vp-1 stay zero
        elif name in ("wpe", "qkvw", "fcw"):
            t.normal_(0.0, 0.02)
        elif name in ("attprojw", "fcprojw"):
            t.normal_(0.0, residual_std)
        elif name in ("ln1w", "ln2w", "lnfw"):
            t.fill_(1.0)
        params[name] = t                           # biases stay zero
    return params


LAYER_NAMES = ("ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb")


class Block(nn.Module):
    """One transformer block; its parameters carry llm.c's names (one layer's slice of each tensor)."""

    def __init__(self, cfg, params, l, dtype):
        super().__init__()
        self.cfg = cfg
        for name in LAYER_NAMES:
            self.register_parameter(name, nn.Parameter(params[name][l].detach().clone().to(dtype)))

    def attention(self, x):
        """Causal self-attention; x (B, T, C) is the LayerNorm output."""
        B, T, C = x.shape
        NH = self.cfg.num_heads
        hs = C // NH
        qkv = F.linear(x, self.qkvw, self.qkvb)                             # (B, T, 3C)
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, NH, hs).transpose(1, 2)                            # (B, NH, T, hs)
        k = k.view(B, T, NH, hs).transpose(1, 2)
        v = v.view(B, T, NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))             # (B, NH, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v                                                         # (B, NH, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.linear(y, self.attprojw, self.attprojb)

    def mlp(self, x):
        h = F.linear(x, self.fcw, self.fcb)
        h = F.gelu(h, approximate="tanh")
        return F.linear(h, self.fcprojw, self.fcprojb)

    def forward(self, x):
        C = self.cfg.channels
        x = x + self.attention(F.layer_norm(x, (C,), self.ln1w, self.ln1b, eps=1e-5))
        x = x + self.mlp(F.layer_norm(x, (C,), self.ln2w, self.ln2b, eps=1e-5))
        return x


class GPT(nn.Module):
    """GPT-2 in nanoGPT's shape, built from and read back as llm.c's 16 tensors ({name: tensor})."""

    def __init__(self, cfg, params, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        for name, shape in param_shapes(cfg):
            if tuple(params[name].shape) != tuple(shape):
                raise ValueError(f"parameter {name}: shape {tuple(params[name].shape)}, config needs {shape}")
        params = {name: torch.as_tensor(t) for name, t in params.items()}
        self.wte = nn.Parameter(params["wte"].detach().clone().to(dtype))
        self.wpe = nn.Parameter(params["wpe"].detach().clone().to(dtype))
        self.h = nn.ModuleList(Block(cfg, params, l, dtype) for l in range(cfg.num_layers))
        self.lnfw = nn.Parameter(params["lnfw"].detach().clone().to(dtype))
        self.lnfb = nn.Parameter(params["lnfb"].detach().clone().to(dtype))

    def forward(self, idx, targets=None):
        """idx, targets (B, T) int64 -> logits (B, T, Vp) and the mean loss over the first V columns."""
        cfg = self.cfg
        B, T = idx.shape
        if T > cfg.max_seq_len:
            raise ValueError(f"T={T} exceeds maxT={cfg.max_seq_len}")
        C, V = cfg.channels, cfg.vocab_size
        x = self.wte[idx] + self.wpe[:T]                                    # (B, T, C)
        for block in self.h:
            x = block(x)
        x = F.layer_norm(x, (C,), self.lnfw, self.lnfb, eps=1e-5)
        logits = x @ self.wte.t()                                           # (B, T, Vp), tied head
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits[:, :, :V].reshape(-1, V), targets.reshape(-1))
        return logits, loss

    def llmc_groups(self):
        """[(name, [parameters])] in llm.c order: one parameter per layer for the per-layer tensors."""
        return [(name, [getattr(b, name) for b in self.h] if name in LAYER_NAMES else [getattr(self, name)])
                for name in PARAM_NAMES]

    def llmc_tensors(self, grad=False):
        """{name: ndarray} of the parameters (or their gradients) in llm.c's stacked shapes."""
        out = {}
        for name, group in self.llmc_groups():
            ts = [(p.grad if grad else p).detach() for p in group]
            out[name] = (torch.stack(ts) if name in LAYER_NAMES else ts[0]).numpy().copy()
        return out


def reference_run(cfg, params, x, y, steps=10, dtype=torch.float32):
    """Forward/backward at the initial params, then `steps` AdamW steps on the same batch.

    Returns {"logits": (B,T,V) ndarray, "loss": float, "grads": {name: ndarray}, "losses": [float]*steps}
    (arrays in `dtype`; losses[i] is the loss before update i, losses[0] == loss).
    """
    model = GPT(cfg, params, dtype)
    xt = torch.as_tensor(np.array(x), dtype=torch.long)
    yt = torch.as_tensor(np.array(y), dtype=torch.long)
    V = cfg.vocab_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.01, foreach=False)
    out = {"losses": []}
    for step in range(max(steps, 1)):
        optimizer.zero_grad(set_to_none=True)
        logits, loss = model(xt, yt)
        loss.backward()
        if step == 0:
            out["logits"] = logits[:, :, :V].detach().numpy().copy()
            out["loss"] = loss.item()
            out["grads"] = model.llmc_tensors(grad=True)
        if step < steps:
            out["losses"].append(loss.item())
            optimizer.step()
    return out


# ----------------------------------------------------------------------------------------------
# files

def _read_header(path, f, magic, versions):
    raw = f.read(HEADER_BYTES)
    if len(raw) != HEADER_BYTES:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than the 1024-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != magic:
        raise ValueError(f"{path}: bad magic, expected {magic}, found {header[0]}")
    if header[1] not in versions:
        raise ValueError(f"{path}: unsupported version {header[1]}, expected one of {versions}")
    return header


def read_model_file(path):
    """(Config, {name: float32 tensor}) from an llm.c model file, version 3 (fp32) or 5 (bf16)."""
    with open(path, "rb") as f:
        header = _read_header(path, f, MODEL_MAGIC, (3, 5))
        maxT, V, L, NH, C, Vp = (int(v) for v in header[2:8])
        cfg = Config(max_seq_len=maxT, vocab_size=V, num_layers=L, num_heads=NH, channels=C,
                     padded_vocab_size=Vp)
        n = num_params(cfg)
        itemsize = 4 if header[1] == 3 else 2
        expected = HEADER_BYTES + itemsize * n
        size = os.fstat(f.fileno()).st_size
        if size != expected:
            raise ValueError(f"{path}: {size} bytes, header ({cfg.describe()}, version {header[1]}) "
                             f"says {expected}")
        if header[1] == 3:
            flat = np.fromfile(f, dtype="<f4", count=n)
        else:   # bfloat16 = upper 16 bits of the float32
            flat = (np.fromfile(f, dtype="<u2", count=n).astype(np.uint32) << 16).view(np.float32)
    params, offset = {}, 0
    for name, shape in param_shapes(cfg):
        size = math.prod(shape)
        params[name] = torch.from_numpy(flat[offset:offset + size].astype(np.float32).reshape(shape))
        offset += size
    return cfg, params


def write_model_file(path, cfg, params):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = [MODEL_MAGIC, 3, cfg.max_seq_len, cfg.vocab_size, cfg.num_layers, cfg.num_heads,
                  cfg.channels, cfg.padded_vocab_size]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for name, shape in param_shapes(cfg):
            f.write(np.ascontiguousarray(np.asarray(params[name], dtype="<f4").reshape(shape)).tobytes())


def write_debug_state(path, cfg, x, y, logits, loss, grads):
    B, T = x.shape
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = [STATE_MAGIC, 2, B, T]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(x, dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(y, dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(logits, dtype="<f4").reshape(B, T, cfg.vocab_size).tobytes())
        f.write(np.array([loss], dtype="<f4").tobytes())
        for name, shape in param_shapes(cfg):
            f.write(np.ascontiguousarray(grads[name], dtype="<f4").reshape(shape).tobytes())


def write_losses(path, losses):
    with open(path, "w") as f:
        for loss in losses:
            f.write("%.8f\n" % loss)


def read_shard_batch(path, B, T, V):
    """x, y (B, T) int32 from the first B*T+1 tokens of an llm.c uint16 data shard."""
    with open(path, "rb") as f:
        header = _read_header(path, f, SHARD_MAGIC, (1,))
        ntok = int(header[2])
        size = os.fstat(f.fileno()).st_size
        if size != HEADER_BYTES + 2 * ntok:
            raise ValueError(f"{path}: {size} bytes, header says {ntok} tokens = {HEADER_BYTES + 2 * ntok} bytes")
        if ntok < B * T + 1:
            raise ValueError(f"{path}: {ntok} tokens, a batch of B={B} T={T} needs {B * T + 1}")
        tokens = np.fromfile(f, dtype="<u2", count=B * T + 1).astype(np.int32)
    if tokens.max() >= V:
        raise ValueError(f"{path}: token {tokens.max()} >= vocab size {V}")
    return tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)


def random_batch(B, T, V, seed):
    """x, y (B, T) int32 from B*T+1 tokens drawn uniformly from [0, V) by numpy default_rng(seed)."""
    tokens = np.random.default_rng(seed).integers(0, V, size=B * T + 1).astype(np.int32)
    return tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)


# ----------------------------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model (a preset, explicit sizes overriding it, or --model-in)")
    m.add_argument("--preset", choices=sorted(PRESETS), help="tiny | d12 | d24 | d36 | d48")
    m.add_argument("-L", "--layers", type=int)
    m.add_argument("--heads", type=int)
    m.add_argument("--channels", type=int)
    m.add_argument("--max-seq-len", type=int, help="maxT (default 1024 without a preset)")
    m.add_argument("--vocab", type=int, help=f"V (default {GPT2_VOCAB})")
    m.add_argument("--padded-vocab", type=int, help="Vp (default V rounded up to a multiple of 128)")
    m.add_argument("--model-in", help="load the weights (and config) from this llm.c model file")
    p.add_argument("--seed", type=int, default=1337, help="init and random-token seed (default 1337)")
    p.add_argument("-B", type=int, required=True, help="batch size")
    p.add_argument("-T", type=int, required=True, help="sequence length")
    p.add_argument("--data", help="llm.c uint16 shard; the batch is its first B*T+1 tokens")
    p.add_argument("--steps", type=int, default=10, help="AdamW steps for the losses file (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="compute dtype (files are float32 either way; default float32)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--name", default="reference", help="file name prefix (default 'reference')")
    args = p.parse_args(argv)
    sizes = (args.preset, args.layers, args.heads, args.channels, args.max_seq_len, args.vocab,
             args.padded_vocab)
    if args.model_in:
        if any(v is not None for v in sizes):
            p.error("--model-in takes the config from the file; drop --preset and the size options")
    else:
        if args.preset is None and None in (args.layers, args.heads, args.channels):
            p.error("give --preset, or all of -L/--layers, --heads, --channels (or --model-in)")
    if args.B <= 0 or args.T <= 0 or args.steps < 0 or args.threads <= 0:
        p.error("-B, -T and --threads must be positive, --steps non-negative")
    for flag, v in (("--layers", args.layers), ("--heads", args.heads), ("--channels", args.channels),
                    ("--max-seq-len", args.max_seq_len), ("--vocab", args.vocab),
                    ("--padded-vocab", args.padded_vocab)):
        if v is not None and v <= 0:
            p.error(f"{flag} must be positive, got {v}")
    return args


def config_from_args(args):
    L, NH, C, maxT = PRESETS[args.preset] if args.preset else (None, None, None, 1024)

    def given(value, default):   # `value or default` took a 0 given for not given
        return default if value is None else value
    return Config(max_seq_len=given(args.max_seq_len, maxT),
                  vocab_size=given(args.vocab, GPT2_VOCAB),
                  num_layers=given(args.layers, L),
                  num_heads=given(args.heads, NH),
                  channels=given(args.channels, C),
                  padded_vocab_size=given(args.padded_vocab, 0))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()

    if args.model_in:
        cfg, params = read_model_file(args.model_in)
        source = f"weights from {args.model_in}"
    else:
        cfg = config_from_args(args)
        params = init_params(cfg, args.seed)
        source = f"llm.c init, torch.manual_seed({args.seed})"
    if args.T > cfg.max_seq_len:
        raise SystemExit(f"error: T={args.T} exceeds maxT={cfg.max_seq_len}")
    if args.data:
        x, y = read_shard_batch(args.data, args.B, args.T, cfg.vocab_size)
        batch = f"first {args.B * args.T + 1} tokens of {args.data}"
    else:
        x, y = random_batch(args.B, args.T, cfg.vocab_size, args.seed)
        batch = f"random tokens, numpy default_rng({args.seed})"
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    print(f"config: {cfg.describe()}  ({num_params(cfg):,} parameters)")
    print(f"params: {source}")
    print(f"batch:  B={args.B} T={args.T}, {batch}")
    print(f"run:    {args.steps} AdamW steps, {args.dtype}, {args.threads} thread(s)")

    t1 = time.perf_counter()
    out = reference_run(cfg, params, x, y, steps=args.steps, dtype=dtype)
    t2 = time.perf_counter()

    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, args.name)
    files = [stem + "_model.bin", stem + "_debug_state.bin", stem + "_losses.txt"]
    write_model_file(files[0], cfg, params)
    write_debug_state(files[1], cfg, x, y, out["logits"], out["loss"], out["grads"])
    write_losses(files[2], out["losses"])
    t3 = time.perf_counter()

    print(f"loss:   {out['loss']:.6f} at init" +
          (f", {out['losses'][-1]:.6f} before step {args.steps}" if args.steps else ""))
    for path in files:
        print(f"wrote   {path} ({os.path.getsize(path):,} bytes)")
    print(f"time:   setup {t1 - t0:.2f} s, forward/backward/AdamW {t2 - t1:.2f} s "
          f"({(t2 - t1) / max(args.steps, 1):.2f} s/step), write {t3 - t2:.2f} s, total {t3 - t0:.2f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
