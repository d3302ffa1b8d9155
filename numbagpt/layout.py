"""Names, shapes and offsets of the tensors that live in one flat float32 buffer, their per-layer
views, and the memory they take.

Parameters (and their grads, AdamW m and v) follow llm.c's order, which is also the order of the
model file. Activations follow llm.c's ActivationTensors, less `probs`: the loss is fused with the
softmax, so the logits buffer is overwritten by dlogits in the backward pass. A tensor whose shape
starts with L holds one slice per layer; `Layout.layer(views, l)` gives layer l's.
"""
import math
from types import SimpleNamespace

import numpy as np

F32 = 4  # bytes per float32 (and per int32 token)

PARAMETER_NAMES = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                   "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")

# The tensors AdamW's weight decay applies to: the matrices (wte, wpe and the four matmuls' weights),
# as in llm.c's train_gpt2.cu and PyTorch's GPT-2 trainers (the tensors of dim >= 2), not the biases
# and the layernorms' weights and biases.
DECAYED_PARAMETERS = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")

# The tensors with a leading L axis: one slice per transformer layer.
LAYER_PARAMETERS = PARAMETER_NAMES[2:14]
LAYER_ACTIVATIONS = ("ln1", "ln1_mean", "ln1_rstd", "qkv", "atty", "lse", "attproj", "residual2",
                     "ln2", "ln2_mean", "ln2_rstd", "fch", "fch_gelu", "fcproj", "residual3")


# The activations whose gradients the backward pass keeps: those its kernels accumulate into
# (model.ACCUMULATED_GRADS) and dlosses. The activation-gradient buffer holds only these: dlogits
# lives in the logits buffer, the residual stream's gradient in "encoded" alone, and nothing reads the
# gradients of residual2, residual3, attproj, fcproj, lse or the means and rstds.
GRAD_ACTIVATIONS = ("encoded", "ln1", "qkv", "atty", "ln2", "fch", "fch_gelu", "lnf", "losses")


def parameter_shapes(config):
    """[(name, shape)] of the 16 parameter tensors, in llm.c order."""
    Vp, C, maxT, L = config.padded_vocab_size, config.channels, config.max_seq_len, config.num_layers
    return [
        ("wte", (Vp, C)), ("wpe", (maxT, C)),
        ("ln1w", (L, C)), ("ln1b", (L, C)),
        ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)),
        ("attprojw", (L, C, C)), ("attprojb", (L, C)),
        ("ln2w", (L, C)), ("ln2b", (L, C)),
        ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)),
        ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)),
        ("lnfw", (C,)), ("lnfb", (C,)),
    ]


def activation_shapes(config, B, T, recompute=0):
    """[(name, shape)] of the activations for a batch of B sequences of T tokens. With recompute >= 1
    fch_gelu, with recompute 2 also ln1 and ln2, hold one layer (leading axis 1), which every layer
    shares: the backward pass recomputes them (llm.c's -r)."""
    C, NH, L, Vp = config.channels, config.num_heads, config.num_layers, config.padded_vocab_size
    L_ln = 1 if recompute >= 2 else L
    L_gelu = 1 if recompute >= 1 else L
    return [
        ("encoded", (B, T, C)),
        ("ln1", (L_ln, B, T, C)), ("ln1_mean", (L, B, T)), ("ln1_rstd", (L, B, T)),
        ("qkv", (L, B, T, 3 * C)), ("atty", (L, B, T, C)),
        ("lse", (L, B, NH, T)),   # flash attention's per-row log-sum-exp: no (T, T) tensor anywhere
        ("attproj", (L, B, T, C)), ("residual2", (L, B, T, C)),
        ("ln2", (L_ln, B, T, C)), ("ln2_mean", (L, B, T)), ("ln2_rstd", (L, B, T)),
        ("fch", (L, B, T, 4 * C)), ("fch_gelu", (L_gelu, B, T, 4 * C)),
        ("fcproj", (L, B, T, C)), ("residual3", (L, B, T, C)),
        ("lnf", (B, T, C)), ("lnf_mean", (B, T)), ("lnf_rstd", (B, T)),
        ("logits", (B, T, Vp)), ("losses", (B, T)),
    ]


def activation_grad_shapes(config, B, T, recompute=0):
    """[(name, shape)] of the activation gradients (GRAD_ACTIVATIONS), shaped as the activations
    (with recompute, ln1, ln2, fch_gelu's hold one layer, which every layer shares here too)."""
    return [(name, shape) for name, shape in activation_shapes(config, B, T, recompute) if name in GRAD_ACTIVATIONS]


class Layout:
    """Tensors packed back to back in one flat buffer: `offsets[name]`, `sizes[name]`, `shapes[name]`;
    `layered` names the tensors whose leading axis is the layer."""

    def __init__(self, shapes, layered=()):
        self.names = [name for name, _ in shapes]
        self.layered = tuple(layered)
        self.shapes = dict(shapes)
        self.sizes = {name: math.prod(shape) for name, shape in shapes}
        self.offsets = {}
        offset = 0
        for name in self.names:
            self.offsets[name] = offset
            offset += self.sizes[name]
        self.total = offset

    def views(self, flat):
        """{name: 1-D view of `flat`} (a NumPy or a device array; both slice without copying)."""
        if flat.shape[0] != self.total:
            raise ValueError(f"buffer has {flat.shape[0]} elements, layout needs {self.total}")
        return {name: flat[self.offsets[name]:self.offsets[name] + self.sizes[name]] for name in self.names}

    def runs(self, keep):
        """[(start, end)]: the offsets of the tensors for which keep(name) is true, adjacent ones
        merged (the fewest slices of a flat buffer that cover exactly those tensors)."""
        out = []
        for name in self.names:
            if keep(name):
                start, end = self.offsets[name], self.offsets[name] + self.sizes[name]
                if out and out[-1][1] == start:
                    start = out.pop()[0]
                out.append((start, end))
        return out

    def host_views(self, flat):
        """{name: view of the NumPy array `flat` with the tensor's shape}."""
        return {name: v.reshape(self.shapes[name]) for name, v in self.views(np.asarray(flat)).items()}

    def layer(self, views, l):
        """Layer l's flat slices of the layered tensors in `views` (a dict from `views`), as
        attributes: layer(views, l).qkv is views["qkv"]'s l-th of its L equal parts. A tensor with a
        leading axis of 1 (a recomputed activation) is every layer's."""
        parts = {}
        for name in self.layered:
            n = self.shapes[name][0]
            size = self.sizes[name] // n
            i = l if n > 1 else 0
            parts[name] = views[name][i * size:(i + 1) * size]
        return SimpleNamespace(**parts)

    def layers(self, views):
        """[layer(views, l) for every layer l]."""
        L = max(self.shapes[name][0] for name in self.layered)
        return [self.layer(views, l) for l in range(L)]


def parameter_layout(config):
    return Layout(parameter_shapes(config), LAYER_PARAMETERS)


def activation_layout(config, B, T, recompute=0):
    return Layout(activation_shapes(config, B, T, recompute), LAYER_ACTIVATIONS)


def activation_grad_layout(config, B, T, recompute=0):
    return Layout(activation_grad_shapes(config, B, T, recompute),
                  [name for name in LAYER_ACTIVATIONS if name in GRAD_ACTIVATIONS])


def num_parameters(config):
    return parameter_layout(config).total


# ---------------------------------------------------------------- memory accounting

def memory_estimate(config, B, T, training=True, optimizer_params=None, recompute=0):
    """Bytes of every buffer a GPT2 of `config` allocates for batches of (B, T), from the config
    alone (nothing is allocated). Keys (bytes): parameters, activations, tokens, and when training
    also gradients, adamw_m, adamw_v (for `optimizer_params` parameters: a ZeRO-1 shard; default
    all), activation_grads (GRAD_ACTIVATIONS only); `total` is their sum. Also
    `num_parameters`, `parameter_tensors` {name: bytes} and `activation_tensors` {name: bytes}
    (the activation-gradient buffer holds those of GRAD_ACTIVATIONS); `recompute` as activation_shapes."""
    params = {name: F32 * math.prod(shape) for name, shape in parameter_shapes(config)}
    acts = {name: F32 * math.prod(shape) for name, shape in activation_shapes(config, B, T, recompute)}
    n_params = sum(params.values())
    n_acts = sum(acts.values())
    n_grad_acts = sum(F32 * math.prod(shape) for _, shape in activation_grad_shapes(config, B, T, recompute))
    buffers = {"parameters": n_params}
    if training:
        moments = n_params if optimizer_params is None else F32 * optimizer_params
        buffers.update(gradients=n_params, adamw_m=moments, adamw_v=moments)
    buffers["activations"] = n_acts
    if training:
        buffers["activation_grads"] = n_grad_acts
    # device copies of the int32 inputs (and targets, when training): B·T tokens each
    buffers["tokens"] = F32 * B * T * (2 if training else 1)
    est = dict(buffers)
    est["total"] = sum(buffers.values())
    est["num_parameters"] = n_params // F32
    est["parameter_tensors"] = params
    est["activation_tensors"] = acts
    return est


def nbytes(a):
    """Bytes of a NumPy or device array (or anything np.asarray takes)."""
    n = getattr(a, "nbytes", None)
    return int(np.asarray(a).nbytes if n is None else n)


def allocated_bytes(model):
    """Bytes of the buffers `model` actually holds (None where not allocated yet), with the keys of
    memory_estimate's buffers."""
    def nb(a):
        return None if a is None else nbytes(a)
    tokens = sum(nbytes(a) for a in (getattr(model, "inputs", None), getattr(model, "targets", None))
                 if a is not None)
    return {"parameters": nb(model.params_flat), "gradients": nb(model.grads_flat),
            "adamw_m": nb(model.m_flat), "adamw_v": nb(model.v_flat),
            "activations": nb(model.acts_flat), "activation_grads": nb(model.grads_acts_flat),
            "tokens": tokens}


def mib(n):
    return n / 2**20


def format_memory(estimate):
    """One line: the buffers of `memory_estimate` in MiB."""
    e = estimate
    parts = [f"parameters {mib(e['parameters']):.1f}"]
    if "gradients" in e:
        parts.append(f"gradients {mib(e['gradients']):.1f}")
        parts.append(f"AdamW m+v {mib(e['adamw_m'] + e['adamw_v']):.1f}")
    parts.append(f"activations {mib(e['activations']):.1f}")
    if "activation_grads" in e:
        parts.append(f"activation grads {mib(e['activation_grads']):.1f}")
    return "memory (MiB): " + ", ".join(parts) + f" | total {mib(e['total']):.1f} MiB"
