"""bin/sample_gpt2: generate text from a trained model, streaming the tokens as they are made.

Generation uses the key/value cache of numbagpt.generate (one row per layer and one query row of
attention per new token); --no-cache recomputes the whole context per token, as llm.c does.
"""
import codecs
import sys
import time

from numbagpt.cli import (HelpFormatter, Parser, add_device, add_flag, add_memory_check, add_precision,
                          check_flags, run_command, use_threads)
from numbagpt.flags import NONNEG, POSITIVE
from numbagpt.generate import TOP_P, prompt_ids, prompt_seen


def build_parser():
    p = Parser(
        prog="sample_gpt2",
        description="Sample text from a numbagpt/llm.c GPT-2 model file (e.g. one train_gpt2 wrote, or one "
                    "import_hf made from a Hugging Face GPT-2). The continuation is printed as it is generated.",
        formatter_class=HelpFormatter)
    p.add_argument("-e", "--model", default="out",
                   help="model .bin file, or a train_gpt2 output directory "
                        "(its newest model_*.bin: the final model, else the latest checkpoint's)")
    p.add_argument("--prompt", default=None, help="text to continue (default: start from the end-of-text token)")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file")
    add_flag(p, "-g", "--gen-tokens", type=int, check=POSITIVE, default=128, help="tokens to generate per sample")
    add_flag(p, "-n", "--num-samples", type=int, check=POSITIVE, default=1, help="samples to generate")
    add_flag(p, "--temperature", type=float, check=NONNEG, default=1.0,
             help="softmax temperature (0: always the most likely token)")
    add_flag(p, "--top-k", type=int, check=NONNEG, default=0,
             help="sample among the k most likely tokens only (0: all)")
    add_flag(p, "--top-p", type=float, check=TOP_P, default=1.0,
                   help="sample among the most likely tokens whose probabilities add up to p (1: all)")
    add_flag(p, "--seed", type=int, check=NONNEG, default=1337, help="seed of the sampling")
    add_precision(p, help="bf16: with --no-cache every forward's matmuls round their operands to bfloat16; "
                           "the KV-cache decoding's one-position matmuls are float32 either way")
    add_device(p)
    add_flag(p, "--omp-threads", type=int, check=POSITIVE, default=None, help="Numba threads (default: all cores)")
    p.add_argument("--tokenizer", default=None,
                   help="llm.c tokenizer .bin (default: a tokenizer .bin next to the model that fits its "
                        "vocabulary, else GPT-2's BPE for a 50257-token model, else the built-in char data's)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token (slow)")
    add_memory_check(p)
    return p


def check_args(parser, args):
    check_flags("sample_gpt2", parser, args)
    if args.prompt is not None and args.prompt_file is not None:
        raise SystemExit(f"{parser.prog}: error: give --prompt or --prompt-file, not both")


def read_prompt(args, tok):
    text = args.prompt
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{args.prompt_file}: cannot read the prompt: {e}") from None
    try:
        return text or "", prompt_ids(tok, text)
    except ValueError as e:   # a character the tokenizer has no token for
        flag = f"--prompt-file {args.prompt_file}" if args.prompt_file is not None else "--prompt"
        raise ValueError(f"{flag}: {e} (tokenizer {tok.name})") from None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return run_command("sample_gpt2", sample, args, compiles=True)


def write_sample(out, text, tokens, tok):
    """The prompt's text, then each of the token ids as it comes (a character whose UTF-8 bytes span
    two tokens printed whole, once its last byte has come), then a newline; returns the tokens' count."""
    out.write(text)
    out.flush()
    utf8, n = codecs.getincrementaldecoder("utf-8")(errors="replace"), 0
    for token in tokens:
        out.write(utf8.decode(tok.decode_bytes([token])))
        out.flush()
        n += 1
    out.write(utf8.decode(b"", final=True) + "\n")
    out.flush()
    return n


def sample(args):
    import numba
    import numpy as np

    from numbagpt import memory
    from numbagpt.backend import get_backend
    from numbagpt.files import formats
    from numbagpt.files.data import find_tokenizer
    from numbagpt.generate import Decoder, generate, sampling_bytes, warm_up
    from numbagpt.model import GPT2
    from numbagpt.train.checkpoint import resolve_model

    use_threads(args.omp_threads or numba.config.NUMBA_NUM_THREADS)
    path = resolve_model(args.model, "-e")
    backend = get_backend(args.device)
    if not args.no_memory_check:  # before the parameters are read (on the device, for a GPU)
        cfg = formats.read_model_header(path)[0]
        memory.check_fits(lambda b: sampling_bytes(cfg, not args.no_cache), 1, f"sampling {path}", backend=backend,
                          hint="use a smaller model or a machine with more memory")
    model = GPT2.from_file(path, backend=backend, precision=args.precision)
    tok = find_tokenizer(args.tokenizer, path, model.config.vocab_size)
    text, prompt = read_prompt(args, tok)
    print(f"model {path} | {model.config.describe()} | tokenizer {tok.name} | device {args.device} | "
          f"precision {args.precision}{'' if args.no_cache else ' (KV cache: float32 matmuls)'} | "
          f"prompt {len(prompt)} tokens", file=sys.stderr, flush=True)
    seen = prompt_seen(len(prompt), model.config.max_seq_len)
    if seen < len(prompt):
        print(f"note: the prompt's {len(prompt)} tokens fill the model's context (maxT={model.config.max_seq_len}): "
              f"it sees the last {seen}, as when a sample fills it (docs/use.md)", file=sys.stderr, flush=True)
    rng = np.random.default_rng(args.seed)
    decoder = None if args.no_cache else Decoder(model, 1)
    warm_up(model, decoder)   # every kernel compiled (a cold cache) before the sample starts on stdout
    out = sys.stdout
    total, t0 = 0, time.perf_counter()
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"{'' if i == 0 else chr(10)}--- sample {i + 1}/{args.num_samples} ---\n")
        tokens = generate(model, prompt, args.gen_tokens, rng, temperature=args.temperature,
                          top_k=args.top_k or None, top_p=args.top_p, use_cache=not args.no_cache, decoder=decoder)
        total += write_sample(out, text, tokens, tok)
    dt = time.perf_counter() - t0
    print(f"{total} tokens in {dt:.2f} s ({total / dt:.1f} tokens/s, {'no cache' if args.no_cache else 'KV cache'})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
