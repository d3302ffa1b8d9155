"""One helper that checks a kernel on a backend: `check(backend, kernel, **arguments)`.

It calls `backend.<kernel>` (numbagpt.cpu or numbagpt.cuda) with the arguments by name, as the kernel
contract (numbagpt/kernels.py) orders them, and compares every output with tests/reference.py's NumPy
float64 result, under the tolerance TOL[kernel] (the contract's, for every backend). For each
output argument the test passes either an int (the harness allocates that many elements: NaN-filled
for an output the kernel writes, so an element it misses or accumulates into fails; random for a
gradient the kernel accumulates into, `+=`) or an array (the initial content: AdamW's state, a
given gradient). Then it checks:

- written outputs against the reference, accumulated gradients against initial + reference (an
  expected NaN means "not compared": the masked half of the legacy kernels' preatt);
- the padding: every output buffer is PAD elements longer than the kernel's sizes say, and those
  must keep their value (a kernel that writes past its size, or a size argument ignored, fails);
- the inputs are unchanged (except an input the output aliases: inplace={"dlogits": "logits"}).

A kernel argument the test leaves out takes its default (matmul_backward's accumulate=True); with
accumulate=False the outputs WRITTEN_UNLESS_ACCUMULATE names are written outputs (NaN-filled first).

It returns the outputs (host float32 copies, without the padding) for a test's own extra checks.

Backends: `cases(cpu=[...], cuda=[...])` turns shape lists into pytest parameters whose first value is
the backend module, for the backends this process runs: the CPU in a normal run, the CUDA simulator
when NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_kernels.py re-runs the kernel test files that way, in a
subprocess), and both on a machine with a GPU. The CUDA shapes are tiny: the simulator runs each CUDA
thread as a Python thread.
"""
import inspect

import numpy as np
import pytest

import reference as ref
from numbagpt.kernels import CONTRACT
from simulator import NUMBA_CUDA, SIM, gpu_present

PAD = 3
PAD_VALUE = np.float32(-12345.0)

# (rtol, atol) of each kernel's outputs against the float64 reference, on every backend; "kernel/case"
# entries are edge cases a test names (case=...).
# (rtol, atol) of each kernel's outputs against the float64 reference, on every backend: the contract's
# (numbagpt/kernels.py), and here the edge cases a test names (case=...: "kernel/case") and the dev
# lab's replaced kernels.
TOL = {k.name: k.tol for k in CONTRACT}
TOL.update({
    "matmul_backward/views": (1e-5, 1e-4),               # dout ~ N(0, 1): gradients ~ sqrt(OC) larger
    "matmul_backward/finite_differences": (1e-4, 1e-4),  # of the kernel's own float32 forward
    # scores of ~100s (most exps flush to 0): lse carries the float32 rounding of the largest score, ~1e-5
    # absolute, as the replaced kernels' preatt did; out against float64 maths on the kernel's own lse
    "attention_forward/saturated": {"out": (1e-5, 1e-5), "lse": (1e-5, 1e-5)},
    # the kernels flash attention replaced (dev/attention.py variants 1 and 2: legacy contract, (T, T) buffers)
    "attention_forward_v1": {"out": (1e-5, 1e-6), "preatt": (1e-5, 1e-6), "att": (1e-5, 1e-7)},
    "attention_backward_v1": (1e-5, 1e-5),
    "attention_backward/finite_differences": (2e-3, 2e-3),
    # test_attention_saturated_softmax (a new check: the replaced kernels' saturated test had no backward):
    # v ~ 12·N(0, 1), so dp and D = dout·out are ~12x the usual size and cancel in ds = p·(dp − D)
    "attention_backward/saturated": (1e-5, 1e-4),   # of the kernel's float32 forward, h = 1e-2
    "crossentropy_forward/shifted": (1e-5, 1e-5),
    "crossentropy_forward/gpt2_vocab": (1e-6, 2e-6),
    "crossentropy_backward/gpt2_vocab": (1e-5, 1e-9),
    "crossentropy_forward_backward/shifted": {"losses": (1e-5, 1e-5), "dlogits": (1e-5, 1e-7)},
    "crossentropy_forward_backward/gpt2_vocab": {"losses": (1e-6, 2e-6), "dlogits": (1e-5, 1e-9)},
    # from a random state: beta1·m + (1 − beta1)·g cancels to near 0 in places, 1 float32 ulp of its terms
    "adamw_update/from_state": {"m": (1e-5, 1e-7), "v": (1e-5, 1e-7), "params": (1e-5, 1e-6)},
    # the float64 references' backwards against central differences (reference.numerical_grad)
    "encoder_backward/reference": (1e-7, 1e-7),
    "layernorm_backward/reference": (1e-7, 1e-7),
    "attention_backward/reference": (1e-7, 1e-7),
    "gelu_backward/reference": (1e-6, 1e-8),
    "crossentropy_backward/reference": (1e-7, 1e-8),
})
TORCH_TOL = {"params": (1e-5, 1e-6), "m": (1e-5, 1e-7), "v": (1e-5, 1e-9)}   # AdamW against torch.optim


def tolerance(kernel, output=None, case=None, backend=None, args=None):
    """TOL's (rtol, atol) for one output: the "kernel/case" entry if there is one, then "kernel@backend",
    then "kernel"; an entry may be a function of the kernel's arguments (a dict)."""
    t = TOL[kernel]
    if backend is not None:
        t = TOL.get(f"{kernel}@{backend}", t)
    if case:
        t = TOL.get(f"{kernel}/{case}", t)
    t = t[output] if isinstance(t, dict) else t
    return t(args) if callable(t) else t


# ---------------------------------------------------------------------------------------------------
# The reference of each kernel on flat arguments: {output: expected float64, flat} (NaN: not compared).
# Every backward's result is the gradient alone; check() adds the initial content of what accumulates.

def _lower(B, NH, T, S=None, t0=0):
    """(B, NH, T, S) mask of the causal pairs of query rows t0.. (key t2 <= t0 + t)."""
    S = T if S is None else S
    tri = np.arange(S)[None, :] <= (t0 + np.arange(T))[:, None]
    return np.broadcast_to(tri, (B, NH, T, S)).reshape(-1)


def _masked(x, mask):
    x = np.array(x, dtype=np.float64).reshape(-1)
    x[~mask] = np.nan
    return x


def _encoder_forward(a):
    B, T, C = a["B"], a["T"], a["C"]
    return {"out": ref.encoder_forward_ref(a["inp"].reshape(B, T), a["wte"].reshape(-1, C), a["wpe"].reshape(-1, C))}


def _encoder_backward(a):
    B, T, C = a["B"], a["T"], a["C"]
    dwte, dwpe = ref.encoder_backward_ref(a["dout"].reshape(B, T, C), a["inp"].reshape(B, T),
                                          a["dwte"].size // C, a["dwpe"].size // C)
    return {"dwte": dwte, "dwpe": dwpe}


def _layernorm_forward(a):
    B, T, C = a["B"], a["T"], a["C"]
    out, mean, rstd = ref.layernorm_forward_ref(a["inp"].reshape(B, T, C), a["weight"], a["bias"])
    return {"out": out, "mean": mean, "rstd": rstd}


def _layernorm_backward(a):
    B, T, C = a["B"], a["T"], a["C"]
    dinp, dweight, dbias = ref.layernorm_backward_ref(a["dout"].reshape(B, T, C), a["inp"].reshape(B, T, C),
                                                      a["weight"])
    return {"dinp": dinp, "dweight": dweight, "dbias": dbias}


def _fused_residual_layernorm_forward(a):
    B, T, C = a["B"], a["T"], a["C"]
    residual = ref.residual_forward_ref(a["inp1"], a["inp2"])
    # the layernorm of the float32 residual the kernel stores: what the backward and -r 2 read back
    ln, mean, rstd = ref.layernorm_forward_ref(residual.astype(np.float32).reshape(B, T, C), a["weight"], a["bias"])
    return {"residual": residual, "ln": ln, "mean": mean, "rstd": rstd}


def _matmul_forward(a):
    C, OC = a["C"], a["OC"]
    return {"out": ref.matmul_forward_ref(a["inp"].reshape(-1, C), a["weight"].reshape(OC, C), a["bias"])}


def _matmul_backward(a):
    C, OC = a["C"], a["OC"]
    dinp, dweight, dbias = ref.matmul_backward_ref(a["dout"].reshape(-1, OC), a["inp"].reshape(-1, C),
                                                   a["weight"].reshape(OC, C))
    return {"dinp": dinp, "dweight": dweight, "dbias": dbias}


def _matmul_forward_bf16(a):
    C, OC = a["C"], a["OC"]
    return {"out": ref.matmul_forward_ref(ref.bf16_round_ref(a["inp"]).reshape(-1, C),
                                          ref.bf16_round_ref(a["weight"]).reshape(OC, C), a["bias"])}


def _matmul_backward_bf16(a):
    # the GEMMs on bf16-rounded operands (a dout in bf16 rows: its values); dbias (a column sum, not a
    # GEMM) of the float32 dout
    C, OC = a["C"], a["OC"]
    dout = ref.from_bf16_rows(a["dout"], OC) if a.get("dout_bf16") else ref.bf16_round_ref(a["dout"])
    dinp, dweight, _ = ref.matmul_backward_ref(dout.reshape(-1, OC),
                                               ref.bf16_round_ref(a["inp"]).reshape(-1, C),
                                               ref.bf16_round_ref(a["weight"]).reshape(OC, C))
    return {"dinp": dinp, "dweight": dweight, "dbias": a["dout"].reshape(-1, OC).astype(np.float64).sum(axis=0)}


def _matvec_forward(a):
    C, OC = a["C"], a["OC"]
    return {"out": ref.matmul_forward_ref(a["inp"].reshape(-1, C), a["weight"].reshape(OC, C), a["bias"])}


def _attention_forward(a):
    B, T, C, NH = a["B"], a["T"], a["C"], a["NH"]
    qkv = a["inp"].reshape(B, T, 3 * C)
    return {"out": ref.attention_forward_ref(qkv, NH)[0], "lse": ref.attention_lse_ref(qkv, NH)}


def _attention_backward(a):
    B, T, C, NH = a["B"], a["T"], a["C"], a["NH"]
    return {"dinp": ref.attention_backward_ref(a["dout"].reshape(B, T, C), a["inp"].reshape(B, T, 3 * C), NH)}


def _attention_forward_v1(a):
    B, T, C, NH = a["B"], a["T"], a["C"], a["NH"]
    out, preatt, att = ref.attention_forward_ref(a["inp"].reshape(B, T, 3 * C), NH)
    return {"out": out, "preatt": _masked(preatt, _lower(B, NH, T)), "att": att}


def _attention_backward_v1(a):
    B, T, C, NH = a["B"], a["T"], a["C"], a["NH"]
    dinp, dpreatt, datt = ref.attention_backward_ref(a["dout"].reshape(B, T, C), a["inp"].reshape(B, T, 3 * C),
                                                     NH, scratch=True)
    lower = _lower(B, NH, T)
    return {"dinp": dinp, "dpreatt": _masked(dpreatt, lower), "datt": _masked(datt, lower)}


def _attention_forward_cached(a):
    """Rows t0.. of the full causal attention over the cached keys and values and the new rows."""
    B, T, t0, C, NH, maxT = a["B"], a["T"], a["t0"], a["C"], a["NH"], a["maxT"]
    hs = C // NH
    new = a["inp"].reshape(B, T, 3, NH, hs)
    k = a["kcache"].reshape(B, NH, maxT, hs).transpose(0, 2, 1, 3)[:, :t0]   # (B, t0, NH, hs)
    v = a["vcache"].reshape(B, NH, maxT, hs).transpose(0, 2, 1, 3)[:, :t0]
    full = np.concatenate([np.stack([np.zeros_like(k), k, v], axis=2), new], axis=1)   # (B, t0+T, 3, NH, hs)
    out, _, att = ref.attention_forward_ref(full.reshape(B, t0 + T, 3 * C), NH)
    att_rows = np.zeros((B, NH, T, maxT))
    att_rows[..., :t0 + T] = att[:, :, t0:]
    kc = a["kcache"].astype(np.float64).reshape(B, NH, maxT, hs)
    vc = a["vcache"].astype(np.float64).reshape(B, NH, maxT, hs)
    kc[:, :, t0:t0 + T] = new[:, :, 1].transpose(0, 2, 1, 3)
    vc[:, :, t0:t0 + T] = new[:, :, 2].transpose(0, 2, 1, 3)
    return {"out": out[:, t0:], "att": att_rows, "kcache": kc, "vcache": vc}


def _gelu_forward(a):
    return {"out": ref.gelu_forward_ref(a["inp"][:a["N"]])}


def _gelu_backward(a):
    return {"dinp": ref.gelu_backward_ref(a["dout"][:a["N"]], a["inp"][:a["N"]])}


def _residual_forward(a):
    N = a["N"]
    return {"out": ref.residual_forward_ref(a["inp1"][:N], a["inp2"][:N])}




def _crossentropy_forward(a):
    B, T, V, Vp = a["B"], a["T"], a["V"], a["Vp"]
    return {"losses": ref.crossentropy_forward_ref(a["logits"].reshape(B, T, Vp), a["targets"].reshape(B, T), V)}


def _crossentropy_backward(a):
    B, T, V, Vp = a["B"], a["T"], a["V"], a["Vp"]
    return {"dlogits": ref.crossentropy_backward_ref(a["dlosses"].reshape(B, T), a["logits"].reshape(B, T, Vp),
                                                     a["targets"].reshape(B, T), V)}


def _crossentropy_forward_backward(a):
    return {**_crossentropy_forward(a), **_crossentropy_backward(a)}


def _adamw_update(a):
    N = a["N"]
    p, m, v = ref.adamw_update_ref(a["params"][:N], a["m"][:N], a["v"][:N], a["grads"][:N], a["lr"], a["beta1"],
                                   a["beta2"], a["eps"], a["weight_decay"], a["grad_scale"], a["t"])
    return {"params": p, "m": m, "v": v}


def _global_norm_squared(a):
    return {"out": np.array([ref.global_norm_squared_ref(a["grads"][:a["N"]])])}


# kernel -> its float64 reference; what it writes, accumulates into and updates is the contract's
REFERENCES = {
    "encoder_forward": _encoder_forward, "encoder_backward": _encoder_backward,
    "layernorm_forward": _layernorm_forward, "layernorm_backward": _layernorm_backward,
    "fused_residual_layernorm_forward": _fused_residual_layernorm_forward,
    "matmul_forward": _matmul_forward, "matmul_backward": _matmul_backward, "matvec_forward": _matvec_forward,
    "matmul_forward_bf16": _matmul_forward_bf16, "matmul_backward_bf16": _matmul_backward_bf16,
    "attention_forward": _attention_forward, "attention_backward": _attention_backward,
    "attention_forward_cached": _attention_forward_cached,
    "gelu_forward": _gelu_forward, "gelu_backward": _gelu_backward, "residual_forward": _residual_forward,
    "crossentropy_forward": _crossentropy_forward, "crossentropy_backward": _crossentropy_backward,
    "crossentropy_forward_backward": _crossentropy_forward_backward,
    "adamw_update": _adamw_update, "global_norm_squared": _global_norm_squared,
}
# kernel -> (the outputs it writes, those it accumulates into, those it updates in place, its reference)
SPECS = {k.name: (k.written, k.accumulated, k.updated, REFERENCES[k.name]) for k in CONTRACT}
# the dev lab's replaced attention kernels (dev/attention.py variants 1 and 2), under their own contract
SPECS.update({
    "attention_forward_v1": (("out", "preatt", "att"), (), (), _attention_forward_v1),
    "attention_backward_v1": (("dpreatt", "datt"), ("dinp",), (), _attention_backward_v1),
})

# kernel -> the outputs it accumulates into by default and writes when called with accumulate=False
WRITTEN_UNLESS_ACCUMULATE = {k.name: k.written_unless_accumulate for k in CONTRACT if k.written_unless_accumulate}


# ---------------------------------------------------------------------------------------------------
# The check

def _host(x):
    """Arrays flat (the kernels take flat buffers), scalars and None as they are."""
    return x if x is None or np.isscalar(x) else np.ascontiguousarray(x).reshape(-1)


def check(backend, kernel, *, inplace=None, case=None, only=None, seed=0, **args):
    """Run backend.<kernel>(**args) and check it against the reference (see the module docstring);
    `only`: the outputs compared with the reference (default all; the others get the padding check).
    Returns {output name: host float32 array}."""
    written, accumulated, updated, reference = SPECS[kernel]
    params = inspect.signature(getattr(backend, kernel)).parameters
    args = {name: args[name] if name in args or p.default is p.empty else p.default for name, p in params.items()}
    if "accumulate" in args and not args["accumulate"]:
        moved = WRITTEN_UNLESS_ACCUMULATE[kernel]
        written += moved
        accumulated = tuple(name for name in accumulated if name not in moved)
    rng = np.random.default_rng(seed)
    inplace = inplace or {}
    names = list(params)
    host = {}
    for name in names:
        value = args[name]
        if name in written + accumulated and isinstance(value, (int, np.integer)):
            value = (rng.standard_normal(value).astype(np.float32) if name in accumulated
                     else np.full(value, np.nan, np.float32))
        host[name] = _host(value)
    for out, inp in inplace.items():
        host[out] = host[inp]
    initial = {n: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for n, v in host.items()}
    want = reference(dict(initial))

    outputs = [n for n in written + accumulated + updated if host.get(n) is not None]
    device, call = {}, []
    for name in names:
        v = host[name]
        if v is None or np.isscalar(v) or name in inplace:
            device[name] = v if name not in inplace else None
        elif name in outputs:   # PAD elements past the end, which the kernel must not touch
            buf = backend.to_device(np.concatenate([v.reshape(-1), np.full(PAD, PAD_VALUE, v.dtype)]))
            device[name] = (buf, buf[:v.size])
        else:
            device[name] = backend.to_device(v)
    for out, inp in inplace.items():
        device[out] = device[inp]
    for name in names:
        d = device[name]
        call.append(d[1] if isinstance(d, tuple) else d)
    getattr(backend, kernel)(*call)
    backend.synchronize()

    got = {}
    for name in outputs:
        d = device[name]
        full = backend.to_host(d[0] if isinstance(d, tuple) else d).reshape(-1)
        if isinstance(d, tuple):
            n = host[name].size
            np.testing.assert_array_equal(full[n:], PAD_VALUE, err_msg=f"{kernel}: {name} written past its end")
            full = full[:n]
        got[name] = full
        expect = np.asarray(want[name], dtype=np.float64).reshape(-1)
        base = initial[name].astype(np.float64).reshape(-1)
        if name in accumulated:
            expect = base[:expect.size] + expect
        expect = np.concatenate([expect, base[expect.size:]])   # past the kernel's N: untouched
        assert expect.size == full.size, (kernel, name, expect.size, full.size)
        if only is not None and name not in only:
            continue
        rtol, atol = tolerance(kernel, name, case, backend.NAME, initial)
        compared = ~np.isnan(expect)
        np.testing.assert_allclose(full[compared], expect[compared], rtol=rtol, atol=atol,
                                   err_msg=f"{kernel} on {backend.NAME}: {name}")
    for name in names:
        if name in outputs or name in inplace.values() or not isinstance(initial[name], np.ndarray):
            continue
        np.testing.assert_array_equal(backend.to_host(device[name]).reshape(-1), initial[name].reshape(-1),
                                      err_msg=f"{kernel}: input {name} changed")
    return got


# ---------------------------------------------------------------------------------------------------
# Backends and cases


def backends():
    """The backend modules this process runs kernels on: {"cpu": numbagpt.cpu, "cuda": numbagpt.cuda}."""
    out = {}
    if not SIM:
        import numbagpt.cpu
        out["cpu"] = numbagpt.cpu
    if NUMBA_CUDA and (SIM or gpu_present()):
        import numbagpt.cuda
        out["cuda"] = numbagpt.cuda
    return out


def cases(cpu=(), cuda=()):
    """pytest parameters (backend, *case) for this process's backends: `cpu` cases on the CPU backend,
    `cuda` cases (tiny: the simulator is slow) on the CUDA one."""
    params = []
    for name, module in backends().items():
        for case in {"cpu": cpu, "cuda": cuda}[name]:
            case = case if isinstance(case, tuple) else (case,)
            params.append(pytest.param(module, *case, id=f"{name}-" + "-".join(map(str, case))))
    return params


def same_bits_at_thread_counts(run, counts=(1, 2)):
    """Call run() (it returns a sequence of arrays) at each Numba thread count of `counts` (at most
    NUMBA_NUM_THREADS; the count in use is restored after) and assert that every call returns the
    first call's arrays bit for bit: what a CPU kernel that sums in a fixed order must do."""
    import numba
    if len({min(n, numba.config.NUMBA_NUM_THREADS) for n in counts}) < 2:   # one count: nothing compared
        pytest.skip(f"NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}: one thread count of {counts}")
    threads, results = numba.get_num_threads(), []
    try:
        for n in counts:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            results.append(run())
    finally:
        numba.set_num_threads(threads)
    for later in results[1:]:
        for a, b in zip(results[0], later, strict=True):
            np.testing.assert_array_equal(a, b)


def rnd(rng, *shape, scale=1.0):
    """A flat float32 array of N(0, scale²) values."""
    return (rng.standard_normal(shape) * scale).astype(np.float32).reshape(-1)
