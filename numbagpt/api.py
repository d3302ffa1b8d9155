"""numbagpt's Python API: the functions the commands are built on (docs/api.md).

    from numbagpt.api import TrainConfig, evaluate, load_model, sample, train
    result = train(TrainConfig(max_steps=20, output_dir="out_api"))   # bin/train_gpt2 -x 20 -o out_api
    model = load_model("out_api")                                      # a run directory, a file or a descriptor
    print(sample(model, "ROMEO:", tokens=40, seed=7))                  # bin/sample_gpt2 -e out_api ...

Every function takes what its command's flags take and raises a ValueError (OSError for a file;
train: numbagpt.train.rundir.RunDirError, a RuntimeError, for an output directory it may not use) with
the one-line message the command prints.
"""
import numpy as np

from .config import GPT2_VOCAB, is_descriptor, preset
from .files import data
from .files.hf import export_hf, import_hf
from .flags import NONNEG, POSITIVE, check_path, check_value
from .files.formats import save_dtype
from .model import GPT2
from .train import TrainConfig, TrainResult, train
from .train.checkpoint import resolve_model

__all__ = ["TrainConfig", "TrainResult", "train", "load_model", "save_model", "sample", "evaluate",
           "export_hf", "import_hf", "resolve_model"]


def load_model(spec, device="cpu", recompute=0, seed=1337, vocab_size=GPT2_VOCAB, precision="fp32"):
    """A GPT2 on `device` from `spec`: an llm.c model file (.bin, v3 float32 or v5 bfloat16), a
    train_gpt2 output directory (its newest whole model_*.bin: the final model, else the latest
    checkpoint's), or a descriptor (tiny, d12, ...: built from scratch, seeded, with `vocab_size`
    tokens). `precision` "bf16": its matmuls round their operands to bfloat16 (--precision)."""
    check_value("--seed", seed, int, NONNEG, optional=False)
    check_value("vocab_size", vocab_size, int, POSITIVE, optional=False)
    check_value("--device", device, str, optional=False)
    spec = check_path("-e", spec)
    if is_descriptor(spec):
        model = GPT2(preset(spec, vocab_size), backend=device, recompute=recompute, precision=precision)
        model.init_weights(seed)
        return model
    return GPT2.from_file(resolve_model(spec), backend=device, recompute=recompute, precision=precision)


def _check_model(model):
    if not isinstance(model, GPT2):
        raise ValueError(f"model must be a GPT2 (load_model(...) makes one), got {type(model).__name__}")


def save_model(model, path, precision="fp32"):
    """Write `model`'s parameters as an llm.c model file, atomically: `precision` "fp32" (version 3) or
    "bf16" (version 5, the parameters rounded to bfloat16 as llm.c's train_gpt2.py writes them)."""
    _check_model(model)
    path = check_path("path", path)
    model.save(path, save_dtype(precision))


def sample(model, prompt="", tokens=128, *, tokenizer=None, model_file=None, temperature=1.0, top_k=None,
           top_p=1.0, seed=1337):
    """`prompt` and `tokens` new tokens after it, decoded, as bin/sample_gpt2 prints one sample (KV
    cache). `tokenizer`: a tokenizer file; by default the one found next to `model_file` (a model file
    or a run directory, as load_model's spec: its newest model's) or the built-in ones that fits the
    model's vocabulary."""
    from .generate import check_sampling, generate, prompt_ids

    _check_model(model)
    check_value("--prompt", prompt, str)
    check_sampling(tokens, temperature, top_k, top_p, seed)
    tokenizer = None if tokenizer is None else check_path("tokenizer", tokenizer)
    model_file = None if model_file is None else resolve_model(model_file, "model_file")
    prompt = prompt or ""
    tok = data.find_tokenizer(tokenizer, model_file, model.config.vocab_size, flag="tokenizer=")
    ids = prompt_ids(tok, prompt)
    rng = np.random.default_rng(seed)
    new = list(generate(model, ids, tokens, rng, temperature=temperature, top_k=top_k or None, top_p=top_p))
    return prompt + tok.decode(new)


def evaluate(model, eval_file, batch_size=32):
    """(correct, total): acc_norm of `model` on an llm.c multiple-choice eval file (HellaSwag), as
    bin/eval_gpt2 computes it in one process."""
    from . import hellaswag
    _check_model(model)
    eval_file = check_path("eval_file", eval_file)
    check_value("-b", batch_size, int, POSITIVE, optional=False)
    examples = hellaswag.read_eval_file(eval_file)
    return hellaswag.evaluate(model, examples, None, batch_size, source=eval_file)
