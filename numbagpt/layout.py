"""Names, shapes and offsets of the tensors that live in one flat float32 buffer.

Parameters (and their grads, AdamW m and v) follow llm.c's order, which is also the order of the
model file. Activations follow llm.c's ActivationTensors, less `probs`: the loss is fused with the
softmax, so the logits buffer is overwritten by dlogits in the backward pass.
"""
import math

import numpy as np

PARAMETER_NAMES = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                   "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")

ACTIVATION_NAMES = ("encoded", "ln1", "ln1_mean", "ln1_rstd", "qkv", "atty", "preatt", "att",
                    "attproj", "residual2", "ln2", "ln2_mean", "ln2_rstd", "fch", "fch_gelu",
                    "fcproj", "residual3", "lnf", "lnf_mean", "lnf_rstd", "logits", "losses")


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


def activation_shapes(config, B, T):
    """[(name, shape)] of the activations for a batch of B sequences of T tokens."""
    C, NH, L, Vp = config.channels, config.num_heads, config.num_layers, config.padded_vocab_size
    return [
        ("encoded", (B, T, C)),
        ("ln1", (L, B, T, C)), ("ln1_mean", (L, B, T)), ("ln1_rstd", (L, B, T)),
        ("qkv", (L, B, T, 3 * C)), ("atty", (L, B, T, C)),
        ("preatt", (L, B, NH, T, T)), ("att", (L, B, NH, T, T)),
        ("attproj", (L, B, T, C)), ("residual2", (L, B, T, C)),
        ("ln2", (L, B, T, C)), ("ln2_mean", (L, B, T)), ("ln2_rstd", (L, B, T)),
        ("fch", (L, B, T, 4 * C)), ("fch_gelu", (L, B, T, 4 * C)),
        ("fcproj", (L, B, T, C)), ("residual3", (L, B, T, C)),
        ("lnf", (B, T, C)), ("lnf_mean", (B, T)), ("lnf_rstd", (B, T)),
        ("logits", (B, T, Vp)), ("losses", (B, T)),
    ]


class Layout:
    """Tensors packed back to back in one flat buffer: `offsets[name]`, `sizes[name]`, `shapes[name]`."""

    def __init__(self, shapes):
        self.names = [name for name, _ in shapes]
        self.shapes = dict(shapes)
        self.sizes = {name: math.prod(shape) for name, shape in shapes}
        self.offsets = {}
        offset = 0
        for name in self.names:
            self.offsets[name] = offset
            offset += self.sizes[name]
        self.total = offset

    @property
    def nbytes(self):
        return 4 * self.total

    def views(self, flat):
        """{name: 1-D view of `flat`} (a NumPy or a device array; both slice without copying)."""
        if flat.shape[0] != self.total:
            raise ValueError(f"buffer has {flat.shape[0]} elements, layout needs {self.total}")
        return {name: flat[self.offsets[name]:self.offsets[name] + self.sizes[name]] for name in self.names}

    def host_views(self, flat):
        """{name: view of the NumPy array `flat` with the tensor's shape}."""
        return {name: v.reshape(self.shapes[name]) for name, v in self.views(np.asarray(flat)).items()}


def parameter_layout(config):
    return Layout(parameter_shapes(config))


def activation_layout(config, B, T):
    return Layout(activation_shapes(config, B, T))


def num_parameters(config):
    return parameter_layout(config).total
