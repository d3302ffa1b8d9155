"""The kernel contract, in one table: for every kernel both backends provide (numbagpt/cpu/<family>.py
and numbagpt/cuda/<family>.py, the same name), its arguments in order (outputs first, then inputs,
then sizes), which outputs it writes (=), accumulates into (+=) or updates in place, its role, its cost
function (numbagpt/costs.py: every kernel but the generation ones, which no training step runs and
the profiler does not time) and its tolerance against the float64 reference (tests/harness.py).

Everything else derives from this table or is tested against it: the backend interface
(numbagpt/backend.py), the cost model and the profiler's families (costs.py), the test harness's
specs and tolerances, the signatures of both backends (tests/test_backend.py) and the table of
docs/kernels.md (tests/test_kernels.py). Adding a kernel is one entry here, its two implementations,
its cost function and its reference.

Roles: "training" kernels are what a training step runs; "bf16" the matmul pair a --precision bf16
step runs instead (same arguments); "generation" the kernels only sampling uses.
"""
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Kernel:
    name: str
    family: str             # the file it lives in, in numbagpt/cpu/ and numbagpt/cuda/ (but the CPU's bf16
    #                         matmuls: cpu/matmul_bf16.py, the bf16 GEMM's own file; docs/kernels.md)
    args: tuple             # the arguments, in order
    written: tuple = ()     # outputs the kernel writes (their contents on entry don't matter)
    accumulated: tuple = ()     # outputs it adds into (+=)
    updated: tuple = ()     # read and rewritten in place (AdamW's state, the KV cache)
    role: str = "training"
    tol: object = None      # (rtol, atol), or {output: (rtol, atol) or a function of the arguments}
    cost: str = None        # the costs.py function (default: the kernel's own name)
    defaults: dict = field(default_factory=dict)   # arguments with a default value
    # accumulated outputs that are written instead when the call says accumulate=False
    written_unless_accumulate: tuple = ()

    @property
    def outputs(self):
        return self.written + self.accumulated + self.updated

    @property
    def signature(self):
        """`name(arg, ...)` with the defaults, as docs/kernels.md writes it."""
        shown = [f"{a}={self.defaults[a]}" if a in self.defaults else a for a in self.args]
        return f"{self.name}({', '.join(shown)})"


def _args(text):
    return tuple(a.strip() for a in text.split(","))


def _dweight_tol(a):
    """matmul_backward's dweight reduces over B·T terms of size ~|x|·|dout|: its atol grows with sqrt(BT/OC)."""
    return 1e-5, 2e-5 * max(1.0, math.sqrt(a["B"] * a["T"] / a["OC"]))


_MATMUL_FORWARD = dict(family="matmul", args=_args("out, inp, weight, bias, B, T, C, OC"), written=("out",),
                       # weights ~ 1/sqrt(C) in the tests: outputs O(1), so an atol means the same everywhere
                       tol=(1e-5, 2e-5))
_MATMUL_BACKWARD = dict(family="matmul", args=_args("dinp, dweight, dbias, dout, inp, weight, B, T, C, OC, accumulate"),
                        accumulated=("dinp", "dweight", "dbias"), defaults={"accumulate": True},
                        written_unless_accumulate=("dweight", "dbias"),
                        tol={"dinp": (1e-5, 2e-5), "dbias": (1e-5, 2e-5), "dweight": _dweight_tol})

CONTRACT = (
    Kernel("encoder_forward", "encoder", _args("out, inp, wte, wpe, B, T, C"), written=("out",), tol=(1e-6, 1e-7)),
    Kernel("encoder_backward", "encoder", _args("dwte, dwpe, dout, inp, B, T, C"), accumulated=("dwte", "dwpe"),
           tol=(1e-6, 1e-6)),
    Kernel("layernorm_forward", "layernorm", _args("out, mean, rstd, inp, weight, bias, B, T, C"),
           written=("out", "mean", "rstd"), tol={"out": (1e-5, 1e-6), "mean": (1e-6, 1e-7), "rstd": (1e-6, 0)}),
    Kernel("layernorm_backward", "layernorm", _args("dinp, dweight, dbias, dout, inp, weight, mean, rstd, B, T, C"),
           accumulated=("dinp", "dweight", "dbias"), tol=(1e-5, 1e-5)),
    Kernel("fused_residual_layernorm_forward", "layernorm",
           _args("residual, ln, mean, rstd, inp1, inp2, weight, bias, B, T, C"),
           written=("residual", "ln", "mean", "rstd"),
           tol={"residual": (1e-6, 1e-7), "ln": (1e-5, 1e-6), "mean": (1e-6, 1e-7), "rstd": (1e-6, 0)}),
    Kernel("matmul_forward", **_MATMUL_FORWARD),
    Kernel("matmul_backward", **_MATMUL_BACKWARD),
    # --precision bf16: the pair with both GEMM operands rounded to bfloat16, against float64 of the
    # rounded inputs: a product of two bf16 values is exact in float32, so the only error is the float32
    # sum's, as for the fp32 kernels: the same tolerances; the same costs (FLOPs, float32 buffers)
    Kernel("matmul_forward_bf16", role="bf16", cost="matmul_forward", **_MATMUL_FORWARD),
    # dout_bf16: dout given in bf16 rows (the LM head's dlogits as crossentropy_*(..., dlogits_bf16=True)
    # writes them), used as they are
    Kernel("matmul_backward_bf16", role="bf16",
           **dict(_MATMUL_BACKWARD, args=_MATMUL_BACKWARD["args"] + ("dout_bf16",),
                  defaults={"accumulate": True, "dout_bf16": False})),
    # lse is the natural log of a sum of exps of scores ~ sqrt(hs): the tolerance of the preatt it replaced
    Kernel("attention_forward", "attention", _args("out, lse, inp, B, T, C, NH"), written=("out", "lse"),
           tol={"out": (1e-5, 1e-6), "lse": (1e-5, 1e-6)}),
    Kernel("attention_backward", "attention", _args("dinp, dout, inp, out, lse, B, T, C, NH"),
           accumulated=("dinp",), tol=(1e-5, 1e-5)),
    Kernel("gelu_forward", "gelu", _args("out, inp, N"), written=("out",), tol=(1e-5, 1e-6)),
    Kernel("gelu_backward", "gelu", _args("dinp, dout, inp, N"), accumulated=("dinp",), tol=(1e-5, 2e-6)),
    Kernel("crossentropy_forward", "crossentropy", _args("losses, logits, targets, B, T, V, Vp"),
           written=("losses",), tol=(1e-5, 1e-6)),
    # dlogits_bf16 (--precision bf16): dlogits written in bf16 rows (docs/kernels.md), for the LM head's
    # matmul_backward_bf16(..., dout_bf16=True)
    Kernel("crossentropy_backward", "crossentropy",
           _args("dlogits, dlosses, logits, targets, B, T, V, Vp, dlogits_bf16"), written=("dlogits",),
           tol={"dlogits": (1e-5, 1e-7), "rowsum": (0, 1e-7)}, defaults={"dlogits_bf16": False}),
    # both of the above from one read of the logits (a training step: its backward follows)
    Kernel("crossentropy_forward_backward", "crossentropy",
           _args("losses, dlogits, dlosses, logits, targets, B, T, V, Vp, dlogits_bf16"),
           written=("losses", "dlogits"), tol={"losses": (1e-5, 1e-6), "dlogits": (1e-5, 1e-7)},
           defaults={"dlogits_bf16": False}),
    Kernel("adamw_update", "adamw",
           _args("params, m, v, grads, lr, beta1, beta2, eps, weight_decay, grad_scale, t, N"),
           updated=("params", "m", "v"), tol={"m": (1e-5, 1e-12), "v": (1e-5, 1e-15), "params": (1e-6, 1e-7)}),
    Kernel("global_norm_squared", "adamw", _args("out, grads, N"), written=("out",), tol=(1e-6, 0)),
    # the generation kernels
    Kernel("residual_forward", "residual", _args("out, inp1, inp2, N"), written=("out",), role="generation",
           tol=(1e-6, 1e-7)),
    Kernel("attention_forward_cached", "attention", _args("out, att, kcache, vcache, inp, B, T, t0, C, NH, maxT"),
           written=("out", "att"), updated=("kcache", "vcache"), role="generation",
           tol={"out": (1e-5, 1e-6), "att": (1e-5, 1e-7), "kcache": (0, 0), "vcache": (0, 0)}),
    Kernel("matvec_forward", "matvec", _args("out, inp, weight, bias, M, C, OC"), written=("out",), role="generation",
           tol=(1e-5, 1e-5)),
)

BY_NAME = {k.name: k for k in CONTRACT}


def names(role):
    """The names of the kernels of one role, in the table's order."""
    return tuple(k.name for k in CONTRACT if k.role == role)


def cost_function_name(kernel):
    return kernel.cost or kernel.name
