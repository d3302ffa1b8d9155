"""GPT-2: parameters, forward, backward and AdamW over one backend's kernels.

The model is backend-agnostic, like llm.c's train_gpt2.c is one file whose layers call kernels: it
holds six flat float32 buffers (parameters, gradients, AdamW m and v, activations, and a second
activation buffer for their gradients), hands views of them to the kernels of `numbagpt.cpu` or
`numbagpt.cuda`, and never touches the numbers itself. The legend (B, T, C, NH, L, V, Vp, maxT) is in
`numbagpt/__init__.py`; docs/kernels.md gives each kernel's contract.
"""
import math
import numbers

import numpy as np

from .files import formats
from .backend import get_backend
from .config import GPT2Config, preset
from .flags import check_value
from .layout import (DECAYED_PARAMETERS, GRAD_ACTIVATIONS, activation_grad_layout, activation_layout,
                     parameter_layout)

# precision -> the matmul pair (backend kernel names) every GEMM of a step runs
PRECISIONS = {"fp32": ("matmul_forward", "matmul_backward"),
              "bf16": ("matmul_forward_bf16", "matmul_backward_bf16")}

# The activation gradients that backward kernels accumulate into (+=), so backward() zeroes them
# first. The activation-gradient buffer holds only these and dlosses (layout.GRAD_ACTIVATIONS), which
# is copied in; dlogits is written into the logits buffer (crossentropy_backward), the residual
# stream's gradient lives in "encoded" alone, and flash attention's backward needs no scratch.
ACCUMULATED_GRADS = ("encoded", "ln1", "qkv", "atty", "ln2", "fch", "fch_gelu", "lnf")
assert set(ACCUMULATED_GRADS) | {"losses"} == set(GRAD_ACTIVATIONS)

# The parameter gradients that a backward's matmul_backward calls cover in full: the weights' dweight
# (wte's from the LM head, over all Vp rows, before encoder_backward adds into the rows of the batch's
# tokens) and the biases' dbias. The first backward after zero_grad() writes them (accumulate=False)
# instead of adding to zeros, the same bits, so zero_grad() zeroes only the other tensors: at d12 it
# zeroes 0.8M floats instead of 124.5M (PyTorch's zero_grad(set_to_none=True) saves the memset likewise).
WRITTEN_GRADS = ("wte", "qkvw", "qkvb", "attprojw", "attprojb", "fcw", "fcb", "fcprojw", "fcprojb")


class GPT2:
    """A GPT-2 model on one backend.

    `params`, `grads`, `m`, `v` are dicts of flat views, by the 16 llm.c tensor names; `acts` and
    `grads_acts` are dicts of flat views of the activations of the last forward's (B, T).
    Between zero_grad() and the next backward() the WRITTEN_GRADS tensors of `grads_flat` still hold
    old values: the model's own readers (grads_host, grad_norm_squared, update) call materialize_grads()
    first, and so must any other code that reads `grads_flat` or `grads` directly.
    Gradient and optimizer buffers are allocated on first use, activations on the first forward and
    again only when a larger batch comes.
    """

    def __init__(self, config: GPT2Config, backend="cpu", recompute=0, precision="fp32"):
        if not isinstance(config, GPT2Config):
            raise ValueError(f"config must be a GPT2Config (numbagpt.config.preset makes one), got "
                             f"{type(config).__name__}")
        check_value("recompute", recompute, int, choices=(0, 1, 2), optional=False)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.config = config
        # llm.c's --precision (its word): fp32, or bf16 mixed precision: every GEMM of the forward and
        # backward (the LM head's too) rounds its two operands to bfloat16 and sums in float32
        # (matmul_forward_bf16 / matmul_backward_bf16); everything else, and every buffer (parameters,
        # gradients, activations, AdamW state), stays float32. The pair is picked here, once, by name
        # (the kernels are looked up on the backend at each call, so a profiler wrapping it sees them).
        self.precision = precision
        self._matmul_forward, self._matmul_backward = PRECISIONS[precision]
        # in bf16 the classifier writes dlogits already rounded, in bf16 rows, and the LM head's backward
        # reads them as they lie (docs/kernels.md, "bf16 rows"): the same products, half the bytes
        self._dlogits_bf16 = precision == "bf16"
        # llm.c's -r: 1 keeps one layer's GELU output and recomputes it in backward, 2 also the
        # layernorm outputs; the gradients are the same bit for bit, the activations take less memory.
        self.recompute = recompute
        self.backend = get_backend(backend)
        self.param_layout = parameter_layout(config)
        self.num_parameters = self.param_layout.total
        self.params_flat = self.backend.zeros(self.num_parameters)
        self.params = self.param_layout.views(self.params_flat)
        self.layer_params = self.param_layout.layers(self.params)
        self.grads_flat = self.m_flat = self.v_flat = None
        # The parameters [start, end) whose AdamW moments this process keeps and updates: all of them,
        # or a ZeRO-1 rank's shard (set_optimizer_shard), so m and v take only the shard's memory.
        self.optimizer_shard = (0, self.num_parameters)
        self.grads = self.m = self.v = None
        self.layer_grads = None
        # True from zero_grad() to the next backward(), which then writes the WRITTEN_GRADS tensors
        self._grads_fresh = False
        # (start, end) runs of the gradient buffer: the tensors zero_grad() zeroes, and WRITTEN_GRADS
        self._zeroed_runs = self.param_layout.runs(lambda name: name not in WRITTEN_GRADS)
        self._written_runs = self.param_layout.runs(lambda name: name in WRITTEN_GRADS)
        self.act_layout = self.grad_act_layout = None
        self.acts_flat = self.grads_acts_flat = None
        self.act_capacity = 0        # elements of the activation buffer
        self.grad_act_capacity = 0   # and of the activation-gradient buffer
        self.B = self.T = 0     # shape of the last forward
        self.has_targets = False
        self.dlogits_ready = False   # the logits buffer holds dlogits

    # ---------------------------------------------------------------- construction, files

    @classmethod
    def from_preset(cls, name, seed=1337, backend="cpu", vocab_size=None, recompute=0, precision="fp32"):
        config = preset(name) if vocab_size is None else preset(name, vocab_size)
        model = cls(config, backend, recompute, precision)
        model.init_weights(seed)
        return model

    @classmethod
    def from_file(cls, path, backend="cpu", recompute=0, precision="fp32"):
        config, params = formats.read_model(path)
        model = cls(config, backend, recompute, precision)
        model.load_parameters(params)
        return model

    def save(self, path, dtype="float32"):
        """An llm.c model file of the parameters, written atomically: version 3 (float32), or 5 with
        dtype="bfloat16". Returns its XXH3-64 hash (hex)."""
        return formats.write_model(path, self.config, self.parameters_host(), dtype)

    def init_weights(self, seed):
        """llm.c's from-scratch init, seeded: weights N(0, 0.02), the two residual projections
        N(0, 0.02/sqrt(2L)), biases 0, layernorm weights 1, wpe N(0, 0.02), wte padding rows 0."""
        cfg = self.config
        rng = np.random.default_rng(seed)
        host = np.zeros(self.num_parameters, dtype=np.float32)
        views = self.param_layout.host_views(host)
        residual_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        for name, view in views.items():
            if name in ("ln1w", "ln2w", "lnfw"):
                view[...] = 1.0
            elif name in ("attprojw", "fcprojw"):
                view[...] = rng.normal(0.0, residual_std, view.shape)
            elif name in ("wte", "wpe", "qkvw", "fcw"):
                view[...] = rng.normal(0.0, 0.02, view.shape)
        views["wte"][cfg.vocab_size:] = 0.0
        self.load_parameters(host)

    def load_parameters(self, host_flat):
        host_flat = np.ascontiguousarray(host_flat, dtype=np.float32).reshape(-1)
        if host_flat.size != self.num_parameters:
            raise ValueError(f"got {host_flat.size} parameters, the model has {self.num_parameters}")
        self.backend.copy_to_device(self.params_flat, host_flat)

    def parameters_host(self):
        return np.array(self.backend.to_host(self.params_flat), copy=True)

    def _need_grads(self, what):
        if self.grads_flat is None:
            raise RuntimeError(f"{what}: no gradients yet: zero_grad(), forward(inputs, targets) and backward() first")

    def grads_host(self):
        self._need_grads("grads_host()")
        self.materialize_grads()
        return np.array(self.backend.to_host(self.grads_flat), copy=True)

    # ---------------------------------------------------------------- memory

    def _ensure_activations(self, B, T):
        if self.act_layout is not None and self.act_layout.shapes["encoded"] == (B, T, self.config.channels):
            return  # the views of the last forward fit
        layout = activation_layout(self.config, B, T, self.recompute)
        if layout.total > self.act_capacity:
            self.acts_flat = self.backend.zeros(layout.total)
            self.act_capacity = layout.total
        glayout = activation_grad_layout(self.config, B, T, self.recompute)
        if glayout.total > self.grad_act_capacity:
            self.grads_acts_flat = None   # reallocated by the next backward (_ensure_grads)
            self.grad_act_capacity = glayout.total
        self.act_layout, self.grad_act_layout = layout, glayout
        self.acts = layout.views(self.acts_flat[:layout.total])
        self.layer_acts = layout.layers(self.acts)
        if self.grads_acts_flat is not None:
            self._grad_act_views()

    def _grad_act_views(self):
        self.grads_acts = self.grad_act_layout.views(self.grads_acts_flat[:self.grad_act_layout.total])
        self.layer_grads_acts = self.grad_act_layout.layers(self.grads_acts)

    def _ensure_grads(self):
        if self.grads_flat is None:
            self.grads_flat = self.backend.zeros(self.num_parameters)
            self.grads = self.param_layout.views(self.grads_flat)
            self.layer_grads = self.param_layout.layers(self.grads)
        if self.grads_acts_flat is None and self.act_layout is not None:  # sized by a forward
            self.grads_acts_flat = self.backend.zeros(self.grad_act_capacity)
            self._grad_act_views()

    def set_optimizer_shard(self, start, end):
        """Keep AdamW moments for, and update, only parameters [start, end) (a ZeRO-1 shard)."""
        if self.m_flat is not None:
            raise RuntimeError("set_optimizer_shard() must come before the first update()")
        if not 0 <= start <= end <= self.num_parameters:
            raise ValueError(f"bad optimizer shard [{start}, {end}) of {self.num_parameters} parameters")
        self.optimizer_shard = (start, end)

    def _ensure_optimizer(self):
        if self.m_flat is None:
            start, end = self.optimizer_shard
            self.m_flat = self.backend.zeros(end - start)
            self.v_flat = self.backend.zeros(end - start)

    # ---------------------------------------------------------------- forward

    def forward(self, inputs, targets=None, train=False):
        """inputs, targets: int32 (B, T) host arrays. Computes logits (B, T, Vp) into acts["logits"];
        with targets also the per-position losses, and returns their mean (a float), else None.
        train=True (with targets: a training step, whose backward() follows): the loss's gradient
        dlogits is computed in the same pass over the logits as the loss (llm.c's fused classifier:
        at V = 50257 that pass reads 0.2 MB a position) and overwrites them, so backward() starts
        from it and logits_host() is refused."""
        cfg, k = self.config, self.backend
        inputs = self._tokens(inputs, "inputs")
        B, T = inputs.shape
        V, Vp, L, NH, C = cfg.vocab_size, cfg.padded_vocab_size, cfg.num_layers, cfg.num_heads, cfg.channels
        if T > cfg.max_seq_len:
            raise ValueError(f"sequence length T={T} exceeds the model's max_seq_len {cfg.max_seq_len}")
        if targets is not None:
            targets = self._tokens(targets, "targets")
            if targets.shape != inputs.shape:
                raise ValueError(f"targets shape {targets.shape} differs from inputs shape {inputs.shape}")
        elif train:
            raise ValueError("forward(train=True) needs targets")
        self._ensure_activations(B, T)
        self.B, self.T = B, T
        self.inputs = k.to_device(inputs.reshape(-1))
        self.targets = k.to_device(targets.reshape(-1)) if targets is not None else None
        self.has_targets = targets is not None
        self.dlogits_ready = False
        p, a = self.params, self.acts
        BTC = B * T * C
        matmul_forward = getattr(k, self._matmul_forward)   # fp32 or bf16 (precision)

        k.encoder_forward(a["encoded"], self.inputs, p["wte"], p["wpe"], B, T, C)                 # (B, T, C)
        out, mean, rstd, lnw, lnb = self._layernorm_of(0)
        k.layernorm_forward(out, mean, rstd, a["encoded"], lnw, lnb, B, T, C)                     # (B, T, C)
        for l in range(L):
            w, x = self.layer_params[l], self.layer_acts[l]  # layer l's weights and activations
            residual = a["encoded"] if l == 0 else self.layer_acts[l - 1].residual3               # (B, T, C)
            matmul_forward(x.qkv, x.ln1, w.qkvw, w.qkvb, B, T, C, 3 * C)                        # (B, T, 3C)
            k.attention_forward(x.atty, x.lse, x.qkv, B, T, C, NH)                      # (B, T, C)
            matmul_forward(x.attproj, x.atty, w.attprojw, w.attprojb, B, T, C, C)               # (B, T, C)
            # Each residual add and the layernorm of its sum in one pass (llm.c's fused_residual_forward):
            # residual2 with ln2, residual3 with the next layer's ln1 (lnf after the last layer).
            k.fused_residual_layernorm_forward(x.residual2, x.ln2, x.ln2_mean, x.ln2_rstd, residual, x.attproj,
                                               w.ln2w, w.ln2b, B, T, C)                           # (B, T, C)
            matmul_forward(x.fch, x.ln2, w.fcw, w.fcb, B, T, C, 4 * C)                          # (B, T, 4C)
            k.gelu_forward(x.fch_gelu, x.fch, 4 * BTC)                                            # (B, T, 4C)
            matmul_forward(x.fcproj, x.fch_gelu, w.fcprojw, w.fcprojb, B, T, 4 * C, C)          # (B, T, C)
            out, mean, rstd, lnw, lnb = self._layernorm_of(l + 1)
            k.fused_residual_layernorm_forward(x.residual3, out, mean, rstd, x.residual2, x.fcproj,
                                               lnw, lnb, B, T, C)                                 # (B, T, C)

        matmul_forward(a["logits"], a["lnf"], p["wte"], None, B, T, C, Vp)                      # (B, T, Vp)
        if targets is None:
            return None
        if train:   # the losses, and dlogits over the logits (backward() starts from them)
            dlosses = self._dlosses(B, T)
            k.crossentropy_forward_backward(a["losses"], a["logits"], dlosses, a["logits"], self.targets,
                                            B, T, V, Vp, self._dlogits_bf16)                      # (B, T)
            self.dlogits_ready = True
        else:
            k.crossentropy_forward(a["losses"], a["logits"], self.targets, B, T, V, Vp)           # (B, T)
        # The only device-to-host copy of a step: B*T floats, summed in float64 on the host.
        return float(np.mean(k.to_host(a["losses"]), dtype=np.float64))

    def _layernorm_of(self, l):
        """(out, mean, rstd, weight, bias) of the layernorm of layer l's input: layer l's ln1, lnf for l = L."""
        if l == self.config.num_layers:
            a, p = self.acts, self.params
            return a["lnf"], a["lnf_mean"], a["lnf_rstd"], p["lnfw"], p["lnfb"]
        x, w = self.layer_acts[l], self.layer_params[l]
        return x.ln1, x.ln1_mean, x.ln1_rstd, w.ln1w, w.ln1b

    def _tokens(self, tokens, what):
        """`tokens` as a contiguous int32 (B, T) array, after checking them as given: an integer dtype
        (no silent cast of 3.7 or 2**32 + 5), a non-empty 2-D shape, ids in [0, V)."""
        tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"{what}: token ids must be integers, got an array of {tokens.dtype}")
        if tokens.ndim != 2 or tokens.size == 0:
            raise ValueError(f"{what} must be a non-empty (B, T) array of token ids, got shape {tokens.shape}")
        V = self.config.vocab_size
        if tokens.min() < 0 or tokens.max() >= V:
            bad = tokens[(tokens < 0) | (tokens >= V)].flat[0]
            raise ValueError(f"{what}: token id {bad} out of range [0, {V})")
        return np.ascontiguousarray(tokens, dtype=np.int32)

    def logits_host(self):
        """(B, T, Vp) logits of the last forward, as a read-only NumPy array: on the CPU a view of the
        model's buffer (no copy of B·T·Vp floats), which the next forward or backward overwrites, so
        copy it to keep it. Refused before any forward, and after forward(train=True) or backward():
        the buffer then holds dlogits."""
        if not self.B:
            raise RuntimeError("logits_host(): no forward yet")
        if self.dlogits_ready:
            raise RuntimeError("the logits buffer holds dlogits (after forward(train=True) or backward()); "
                               "run forward() without train=True to read logits")
        logits = self.backend.to_host(self.acts["logits"]).reshape(self.B, self.T, self.config.padded_vocab_size)
        view = logits.view()
        view.flags.writeable = False   # writing into it would change the next backward's dlogits
        return view

    # ---------------------------------------------------------------- backward

    def _dlosses(self, B, T):
        """The gradient buffer of the losses, set to d(mean loss)/d(losses[b,t]) = 1/(B*T)."""
        self._ensure_grads()
        dlosses = self.grads_acts["losses"]
        self.backend.copy_to_device(dlosses, np.full(B * T, 1.0 / (B * T), dtype=np.float32))
        return dlosses

    def zero_grad(self):
        """Gradients to zero: the tensors no backward writes in full now, WRITTEN_GRADS by the next
        backward() (or by materialize_grads(), if something reads the gradients before it)."""
        self._ensure_grads()
        for start, end in self._zeroed_runs:
            self.backend.fill_zero(self.grads_flat[start:end])
        self._grads_fresh = True

    def materialize_grads(self):
        """Make `grads_flat` hold the gradients in full: after zero_grad() with no backward() since,
        zero the WRITTEN_GRADS tensors too (a no-op otherwise)."""
        if self._grads_fresh:
            for start, end in self._written_runs:
                self.backend.fill_zero(self.grads_flat[start:end])
            self._grads_fresh = False

    def backward(self):
        """Gradients of the mean loss of the last forward, added to `grads` (zero_grad first). Right
        after zero_grad() the matmuls write their dweight and dbias instead (accumulate=False): the
        same result, without having had to zero them."""
        if not self.has_targets:
            raise RuntimeError("backward() needs a forward() with targets first")
        cfg, k = self.config, self.backend
        self._ensure_grads()
        acc = not self._grads_fresh  # False: each matmul's dweight and dbias are written, not added to
        B, T = self.B, self.T
        V, Vp, L, NH, C = cfg.vocab_size, cfg.padded_vocab_size, cfg.num_layers, cfg.num_heads, cfg.channels
        BTC = B * T * C
        p, g, a, ga = self.params, self.grads, self.acts, self.grads_acts
        matmul_backward = getattr(k, self._matmul_backward)   # fp32 or bf16 (precision)
        for name in ACCUMULATED_GRADS:  # every step: the kernels accumulate into them
            k.fill_zero(ga[name])
        # The logits buffer is overwritten by dlogits: the two are never needed at once.
        if not self.dlogits_ready:   # else forward(train=True) computed them with the loss
            k.crossentropy_backward(a["logits"], self._dlosses(B, T), a["logits"], self.targets,
                                    B, T, V, Vp, self._dlogits_bf16)                              # (B, T, Vp)
            self.dlogits_ready = True
        dlogits = a["logits"]
        bf16_rows = (True,) if self._dlogits_bf16 else ()   # matmul_backward_bf16's dout_bf16
        matmul_backward(ga["lnf"], g["wte"], None, dlogits, a["lnf"], p["wte"], B, T, C, Vp, acc, *bf16_rows)
        # The residual stream's gradient is one buffer (llm.c's train_gpt2.cu): each layernorm
        # backward adds its dinp to it, and each residual projection's backward reads it as its dout;
        # no residual_backward copies it. It ends as the gradient of `encoded`.
        dresidual = ga["encoded"]
        k.layernorm_backward(dresidual, g["lnfw"], g["lnfb"], ga["lnf"], self.layer_acts[L - 1].residual3,
                             p["lnfw"], a["lnf_mean"], a["lnf_rstd"], B, T, C)                   # (B, T, C)

        for l in reversed(range(L)):
            w, dw = self.layer_params[l], self.layer_grads[l]        # layer l's weights, their grads
            x, dx = self.layer_acts[l], self.layer_grads_acts[l]     # its activations, their grads
            residual = a["encoded"] if l == 0 else self.layer_acts[l - 1].residual3
            if self.recompute >= 1:  # fch_gelu and its grad are one buffer all layers share
                k.gelu_forward(x.fch_gelu, x.fch, 4 * BTC)
                k.fill_zero(dx.fch_gelu)
            matmul_backward(dx.fch_gelu, dw.fcprojw, dw.fcprojb, dresidual,
                              x.fch_gelu, w.fcprojw, B, T, 4 * C, C, acc)                         # (B, T, 4C)
            k.gelu_backward(dx.fch, dx.fch_gelu, x.fch, 4 * BTC)                                  # (B, T, 4C)
            if self.recompute >= 2:  # so are ln2 and ln1: the same inputs give the same bits
                k.layernorm_forward(x.ln2, x.ln2_mean, x.ln2_rstd, x.residual2, w.ln2w, w.ln2b, B, T, C)
                k.fill_zero(dx.ln2)
            matmul_backward(dx.ln2, dw.fcw, dw.fcb, dx.fch, x.ln2, w.fcw, B, T, C, 4 * C, acc)  # (B, T, C)
            k.layernorm_backward(dresidual, dw.ln2w, dw.ln2b, dx.ln2,
                                 x.residual2, w.ln2w, x.ln2_mean, x.ln2_rstd, B, T, C)            # (B, T, C)
            matmul_backward(dx.atty, dw.attprojw, dw.attprojb, dresidual,
                              x.atty, w.attprojw, B, T, C, C, acc)                                # (B, T, C)
            k.attention_backward(dx.qkv, dx.atty, x.qkv, x.atty, x.lse, B, T, C, NH)              # (B, T, 3C)
            if self.recompute >= 2:
                k.layernorm_forward(x.ln1, x.ln1_mean, x.ln1_rstd, residual, w.ln1w, w.ln1b, B, T, C)
                k.fill_zero(dx.ln1)
            matmul_backward(dx.ln1, dw.qkvw, dw.qkvb, dx.qkv, x.ln1, w.qkvw, B, T, C, 3 * C, acc)  # (B, T, C)
            k.layernorm_backward(dresidual, dw.ln1w, dw.ln1b, dx.ln1,
                                 residual, w.ln1w, x.ln1_mean, x.ln1_rstd, B, T, C)               # (B, T, C)

        k.encoder_backward(g["wte"], g["wpe"], ga["encoded"], self.inputs, B, T, C)
        self._grads_fresh = False  # a next backward (gradient accumulation) adds to these
        # The logits now hold dlogits (logits_host() refuses them): a second backward needs a new forward.
        self.has_targets = False

    # ---------------------------------------------------------------- optimizer

    def grad_norm_squared(self, start=0, end=None):
        """Σ g² over the gradients [start, end) (all by default), as a float."""
        end = self.num_parameters if end is None else end
        self._need_grads("grad_norm()")
        self.materialize_grads()
        out = self.backend.zeros(1)
        self.backend.global_norm_squared(out, self.grads_flat[start:end], end - start)
        return float(self.backend.to_host(out)[0])

    def grad_norm(self):
        """The global L2 norm of the gradients."""
        return math.sqrt(self.grad_norm_squared())

    def update(self, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, t=1, grad_scale=1.0, decay_all=False):
        """One AdamW step (t counts from 1) of the optimizer shard's parameters (all by default),
        on the gradients times grad_scale (clipping, averaging over ranks). weight_decay applies to
        the matrices (layout.DECAYED_PARAMETERS: llm.c's train_gpt2.cu, PyTorch's GPT-2 trainers),
        with decay_all to every parameter (llm.c's train_gpt2.c and test_gpt2.c)."""
        self._need_grads("update()")
        for name, value in (("lr", lr), ("grad_scale", grad_scale)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"update(): {name} must be a finite number >= 0, got {value!r}")
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 1:
            raise ValueError(f"update(): t (the AdamW step, counted from 1) must be an integer >= 1, got {t!r}")
        self._ensure_optimizer()
        self.materialize_grads()
        start, end = self.optimizer_shard
        for a, b, decay in self._decay_segments(weight_decay, decay_all):
            self.backend.adamw_update(self.params_flat[a:b], self.m_flat[a - start:b - start],
                                      self.v_flat[a - start:b - start], self.grads_flat[a:b], lr, beta1, beta2,
                                      eps, decay, grad_scale, t, b - a)

    def _decay_segments(self, weight_decay, decay_all):
        """[(start, end, decay)]: the optimizer shard cut where the weight decay changes: `weight_decay`
        on the decayed tensors' offsets (all, with decay_all), 0 elsewhere; one segment where all agree."""
        start, end = self.optimizer_shard
        if weight_decay == 0 or decay_all:
            return [(start, end, weight_decay)]
        out, pos = [], start
        for a, b in self.param_layout.runs(lambda name: name in DECAYED_PARAMETERS):
            a, b = max(a, start), min(b, end)
            if a < b:
                if pos < a:
                    out.append((pos, a, 0.0))
                out.append((a, b, weight_decay))
                pos = b
        if pos < end:
            out.append((pos, end, 0.0))
        return out
