"""bin/train_gpt2: train GPT-2 from scratch or from a checkpoint, llm.c's flags with long names.

With no data flags it trains the `tiny` preset on the built-in Shakespeare (prepared on first use).
"""
import argparse
import os
import sys
import time


def build_parser():
    p = argparse.ArgumentParser(
        prog="train_gpt2",
        description="Train GPT-2 with numbagpt. With no -i/-j it prepares the built-in Shakespeare "
                    "(GPT-2 BPE, cached) and trains the `tiny` preset from scratch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="backend that runs the kernels")
    p.add_argument("--omp-threads", type=int, default=None,
                   help="Numba threads per process (default: all cores, divided among the ranks)")
    p.add_argument("-i", "--train-data", default=None, help="glob of train shards (.bin); default: built-in Shakespeare")
    p.add_argument("-j", "--val-data", default=None, help="glob of val shards; default: built-in Shakespeare val")
    p.add_argument("-e", "--model", default="tiny",
                   help="model .bin file to start from, or a preset: tiny, d12, d24, d36, d48")
    p.add_argument("-o", "--output-dir", default="out", help="where main.log and the model files go ('' for none)")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="B, sequences per step per process")
    p.add_argument("-t", "--seq-len", type=int, default=128, help="T, tokens per sequence")
    p.add_argument("-l", "--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("-u", "--warmup-iters", type=int, default=10, help="linear warmup steps")
    p.add_argument("-q", "--final-lr-frac", type=float, default=0.1,
                   help="cosine decay to this fraction of the peak lr at the last step")
    p.add_argument("-c", "--weight-decay", type=float, default=0.0, help="AdamW weight decay (all parameters)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global grad norm to this (0: off)")
    p.add_argument("-x", "--max-steps", type=int, default=150, help="training steps")
    p.add_argument("-v", "--val-every", type=int, default=25, help="evaluate val loss every N steps (0: never)")
    p.add_argument("-m", "--val-batches", type=int, default=10, help="batches per val evaluation")
    p.add_argument("-s", "--sample-every", type=int, default=50, help="print a sample every N steps (0: never)")
    p.add_argument("-g", "--gen-tokens", type=int, default=64, help="tokens per sample (0: no sampling)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the init, the data order and sampling")
    p.add_argument("--shuffle", type=int, choices=(0, 1), default=1, help="shuffle the train windows")
    p.add_argument("--tokenizer", default=None, help="llm.c tokenizer .bin to decode samples "
                   "(default: the one next to the built-in data, else GPT-2 BPE)")
    return p


def lr_at(step, args):
    """Linear warmup to args.lr, then cosine decay to args.lr * final_lr_frac at the last step."""
    import math
    if step < args.warmup_iters:
        return args.lr * (step + 1) / args.warmup_iters
    span = max(1, args.max_steps - args.warmup_iters)
    progress = min(1.0, (step - args.warmup_iters) / span)
    lo = args.lr * args.final_lr_frac
    return lo + 0.5 * (args.lr - lo) * (1.0 + math.cos(math.pi * progress))


def check_args(args):
    for name in ("batch_size", "seq_len", "max_steps"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"train_gpt2: --{name.replace('_', '-')} must be positive")
    if args.omp_threads is not None and args.omp_threads <= 0:
        raise SystemExit("train_gpt2: --omp-threads must be positive")


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.omp_threads is not None:
        # Numba reads this once, at import: it caps what set_num_threads may ask for.
        os.environ["NUMBA_NUM_THREADS"] = str(max(args.omp_threads, int(os.environ.get("NUMBA_NUM_THREADS", 0))))
    try:
        return train(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"train_gpt2: error: {e}", file=sys.stderr)
        return 1


def train(args):
    import numba
    import numpy as np

    from numbagpt import data, tokenizer
    from numbagpt.config import PRESETS
    from numbagpt.dist import init_world
    from numbagpt.layout import num_parameters
    from numbagpt.model import GPT2

    world = init_world()
    say = print if world.is_master else (lambda *a, **k: None)
    threads = args.omp_threads or max(1, numba.config.NUMBA_NUM_THREADS // world.size)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    say(f"numbagpt | device {args.device} | processes {world.size} | threads/process {numba.get_num_threads()}")

    # Data: the built-in Shakespeare unless shards are given.
    tok_path = args.tokenizer
    train_glob, val_glob = args.train_data, args.val_data
    if train_glob is None:
        if world.is_master:
            builtin = data.ensure_builtin_data()
        world.barrier()
        builtin = data.ensure_builtin_data()
        train_glob = builtin[0]
        val_glob = val_glob or builtin[1]
        tok_path = tok_path or builtin[2]

    # Model: a preset from scratch (same seed on every rank) or a checkpoint.
    if args.model in PRESETS:
        model = GPT2.from_preset(args.model, seed=args.seed, backend=args.device)
    else:
        model = GPT2.from_file(args.model, backend=args.device)
    cfg = model.config
    B, T = args.batch_size, args.seq_len
    if T > cfg.max_seq_len:
        raise ValueError(f"--seq-len {T} exceeds the model's max_seq_len {cfg.max_seq_len}")
    say(f"model: {args.model} | {cfg.describe()} | parameters {num_parameters(cfg):,}")
    mem = model.memory_bytes(B, T)
    say("memory: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in mem.items())
        + f" | total {sum(mem.values()) / 2**20:.1f} MiB")

    train_loader = data.DataLoader(train_glob, B, T, rank=world.rank, world_size=world.size,
                                   shuffle=bool(args.shuffle), seed=args.seed, vocab_size=cfg.vocab_size)
    val_loader = None
    if val_glob and args.val_every > 0 and args.val_batches > 0:
        val_loader = data.DataLoader(val_glob, B, T, rank=world.rank, world_size=world.size,
                                     vocab_size=cfg.vocab_size)
    tok = tokenizer.load_tokenizer(tok_path) if tok_path else None
    say(f"train: {train_glob} | val: {val_glob} | B={B} T={T} | tokens/step {world.size * B * T:,}")

    log = None
    if args.output_dir and world.is_master:
        os.makedirs(args.output_dir, exist_ok=True)
        log = open(os.path.join(args.output_dir, "main.log"), "w")

    def evaluate(step):
        val_loader.reset()
        losses = [model.forward(*val_loader.next_batch()) for _ in range(args.val_batches)]
        val_loss = world.mean(float(np.mean(losses)))
        say(f"val loss {val_loss:.4f}")
        if log:
            log.write(f"s:{step} tel:{val_loss:.4f}\n")
            log.flush()

    rng = np.random.default_rng(args.seed)

    def sample(step):
        if tok is None or not world.is_master:
            return
        prompt = [tok.eot_token] if tok.eot_token is not None else [0]
        ids = model.generate(prompt, args.gen_tokens, rng)
        say(f"--- sample at step {step} ---\n{tok.decode(ids)}\n---")

    t_start = time.perf_counter()
    for step in range(args.max_steps + 1):
        last = step == args.max_steps
        if val_loader and (step % args.val_every == 0 or last):
            evaluate(step)
        if args.gen_tokens > 0 and args.sample_every > 0 and (step > 0 and step % args.sample_every == 0 or last):
            sample(step)
        if last:
            break
        t0 = time.perf_counter()
        inputs, targets = train_loader.next_batch()
        loss = model.forward(inputs, targets)
        model.zero_grad()
        model.backward()
        world.allreduce_mean_(model.grads_flat, model.backend)
        norm = model.grad_norm()
        scale = args.grad_clip / norm if args.grad_clip > 0 and norm > args.grad_clip else 1.0
        lr = lr_at(step, args)
        model.update(lr, weight_decay=args.weight_decay, t=step + 1, grad_scale=scale)
        model.backend.synchronize()
        loss = world.mean(loss)
        dt = time.perf_counter() - t0
        say(f"step {step + 1:4d}/{args.max_steps} | loss {loss:.4f} | lr {lr:.2e} | norm {norm:.2f} | "
            f"{dt * 1000:.0f} ms | {world.size * B * T / dt:.0f} tok/s")
        if log:
            log.write(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}\n")
            log.flush()

    if args.output_dir and world.is_master:
        path = os.path.join(args.output_dir, f"model_{args.max_steps:08d}.bin")
        model.save(path)
        say(f"wrote {path}")
    if log:
        log.close()
    say(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
