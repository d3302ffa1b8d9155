"""Every CUDA kernel, compiled to machine code for sm_80 and sm_90, fits its real launches — no GPU needed.

dev/cuda_resources.py compiles each kernel (PTX from Numba, cubin from nvJitLink) and reads ptxas's
registers, spills and shared memory; the launches come from the launchers' own plan functions for every
kernel call of a d12 (B=16, T=1024) and a tiny (B=4, T=64) training step. This module fails when:
- any kernel spills (spill stores/loads, local memory or stack);
- any launch exceeds a per-block limit (threads, registers × threads, shared memory without the opt-in
  attribute, grid dimensions) or fits no block on an SM;
- any launch's theoretical occupancy is below its family's floor (docs/cuda.md, "Resources and occupancy");
- the tool's list of a step's kernel calls differs from what the model really calls (recorded on the CPU
  backend for a micro GPT-2), or the split-K heuristic's blocks-per-SM differs from the GEMM's residency.
The occupancy rules themselves are checked on hand-computed cases, and the detection of spills and of
oversized static shared memory (rejected by ptxas) on two deliberately bad kernels, so the test can fail.
Skips (with the reason) only if NVVM or nvJitLink cannot be loaded, or under the simulator.
"""
import collections
import inspect

import numpy as np
import pytest

from dev import cuda_resources as R

_ERR = R.toolchain_error()
if _ERR:
    pytest.skip(f"cannot compile CUDA kernels here ({_ERR})", allow_module_level=True)

from numba import cuda, float32, int64  # noqa: E402

ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def rows():
    return R.report(("d12", "tiny"), ARCHS)


def test_no_kernel_spills():
    table = R.kernel_table(ARCHS)
    assert len(table) >= 2 * 20
    spilled = [f"{name} {arch}: {r}" for (name, arch), r in table.items() if r.spills]
    assert not spilled, "\n".join(spilled)
    assert all(r.registers > 0 for r in table.values())


def test_every_launch_fits_and_meets_its_floor(rows):
    kernels = {r.kernel for r in rows}
    assert {"gemm_forward_bias", "flash_attention_forward_kernel", "flash_attention_dkdv_kernel",
            "flash_attention_dq_kernel",
            "crossentropy_forward_backward_kernel", "adamw_kernel"} <= kernels
    assert {(r.shape, r.arch) for r in rows} == {(s, a) for s in ("d12", "tiny") for a in ARCHS}
    bad = [f"{r.shape} {r.arch} {r.function}/{r.kernel} grid {r.grid} block {r.block}: {'; '.join(r.problems)}"
           for r in rows if r.problems]
    assert not bad, "\n".join(bad)


def test_split_k_assumes_the_gemm_residency(rows):
    from numbagpt.cuda import matmul
    gemm = {r.occ["blocks_per_sm"] for r in rows if r.kernel.startswith("gemm_backward")}
    assert gemm == {matmul.BLOCKS_PER_SM}, gemm


def _sizes(name, args):
    """The size arguments of a backend call, as dev/cuda_resources.step_calls lists them."""
    import numbagpt.cuda as GPU
    params = list(inspect.signature(getattr(GPU, name)).parameters)
    sizes = tuple(int(a) for p, a in zip(params, args) if p in ("B", "T", "C", "OC", "NH", "V", "Vp", "N"))
    if name == "matmul_forward":
        sizes += (args[3] is not None,)
    if name == "matmul_backward":
        sizes += (args[2] is not None, args[10] if len(args) > 10 else True)
    return sizes


class Recorder:
    """The CPU backend, recording (kernel function, size arguments) of every call."""

    def __init__(self):
        import numbagpt.cpu as CPU
        self._cpu = CPU
        self.calls = collections.Counter()

    def __getattr__(self, name):
        fn = getattr(self._cpu, name)
        if name not in R.training_kernels():
            return fn

        def record(*args):
            self.calls[(name, _sizes(name, args))] += 1
            return fn(*args)
        return record


@pytest.mark.parametrize("recompute", [0, 1, 2])
def test_step_calls_match_the_model(recompute):
    from numbagpt.config import GPT2Config
    from numbagpt.model import GPT2
    from numbagpt.train.step import train_step
    cfg = GPT2Config(max_seq_len=8, vocab_size=37, num_layers=2, num_heads=2, channels=16)
    B, T = 2, 4
    rec = Recorder()
    model = GPT2(cfg, backend=rec, recompute=recompute)
    model.init_weights(seed=0)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T + 1)).astype(np.int32)
    train_step(model, [(tokens[:, :-1], tokens[:, 1:])], lr=1e-3, t=1)
    want = collections.Counter()
    for name, sizes, count in R.step_calls(cfg, B, T, recompute):
        want[(name, sizes)] += count
    assert rec.calls == want


def test_every_kernel_function_has_a_plan():
    from numbagpt.backend import KERNELS
    for name in KERNELS:
        sizes = {"matmul_forward": (2, 3, 8, 5, True), "matmul_backward": (2, 3, 8, 5, True, False),
                 "matmul_forward_bf16": (2, 3, 8, 5, True), "matmul_backward_bf16": (2, 3, 8, 5, True, False),
                 "attention_forward": (2, 3, 8, 2), "attention_backward": (2, 3, 8, 2),
                 "crossentropy_forward": (2, 3, 37, 64), "crossentropy_backward": (2, 3, 37, 64),
                 "crossentropy_forward_backward": (2, 3, 37, 64),
                 "encoder_forward": (2, 3, 8), "encoder_backward": (2, 3, 8),
                 "layernorm_forward": (2, 3, 8), "layernorm_backward": (2, 3, 8),
                 "fused_residual_layernorm_forward": (2, 3, 8),
                 "attention_forward_cached": (1, 2, 3, 8, 2, 8), "matvec_forward": (1, 8, 5)}.get(name, (100,))
        launches = R.plan(name, sizes, sms=108)
        assert launches and all(launch.blocks() > 0 and launch.block > 0 for launch in launches), name


# ----------------------------------------------------------------------------- the rules themselves

def _res(regs, shared=0, spill=0):
    return R.Resources(registers=regs, spill_stores=spill, spill_loads=spill, stack=0, local=0, shared=shared,
                       const=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_occupancy_rules(arch):
    # 128 regs × 64 threads: a warp takes 4096 registers, a 16384-register sub-partition holds 4 → 16 warps
    o = R.occupancy(_res(128, 8448), 64, 0, arch)
    assert (o["blocks_per_sm"], o["warps_per_sm"], o["limiter"], o["errors"]) == (8, 16, "registers", [])
    # 32 regs × 256 threads: 2048 threads per SM allow 8 blocks (64 warps, 100%)
    o = R.occupancy(_res(32), 256, 0, arch)
    assert (o["blocks_per_sm"], o["occupancy"]) == (8, 1.0)
    # 40 regs round up to 1280 per warp: 12 warps per sub-partition → 48 warps → 6 blocks of 8 warps
    assert R.occupancy(_res(40), 256, 0, arch)["blocks_per_sm"] == 6
    # 32-thread blocks stop at 32 blocks per SM
    o = R.occupancy(_res(16), 32, 0, arch)
    assert (o["blocks_per_sm"], o["limiter"]) == (32, "blocks")
    # shared memory: 40 KB + 1 KB reserved per block
    per_sm = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}[arch]
    o = R.occupancy(_res(32, 40 * 1024), 128, 0, arch)
    assert (o["blocks_per_sm"], o["limiter"]) == (per_sm // (41 * 1024), "shared")


@pytest.mark.parametrize("arch", ARCHS)
def test_launch_failures_detected(arch):
    assert any("threads per block" in e for e in R.occupancy(_res(16), 2048, 0, arch)["errors"])
    assert any("registers x 1024" in e for e in R.occupancy(_res(128), 1024, 0, arch)["errors"])
    assert any("opt-in" in e for e in R.occupancy(_res(32, 40 * 1024), 128, 9 * 1024, arch)["errors"])
    assert not R.occupancy(_res(64), 1024, 0, arch)["errors"]  # 64 × 1024 = 65536 exactly fits
    assert R.grid_errors_of((1, 65536, 1)) and R.grid_errors_of((2 ** 31, 1, 1))
    assert not R.grid_errors_of((2 ** 31 - 1, 65535, 65535))


@cuda.jit
def _spilling_kernel(out, n):
    buf = cuda.local.array(2048, float32)  # indexed at run time: lives in local memory
    i = cuda.grid(1)
    for j in range(2048):
        buf[j] = out[(i + j) % n]
    out[i % n] = buf[(i * 7) % 2048]


@cuda.jit
def _big_shared_kernel(out, n):
    sm = cuda.shared.array(14000, float32)  # 56 000 B > 48 KB
    i = cuda.threadIdx.x
    sm[i] = out[i % n]
    cuda.syncthreads()
    out[i % n] = sm[(i + 1) % 14000]


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_kernels_are_caught(arch):
    sig = (float32[::1], int64)
    res = R.resources(_spilling_kernel, sig, arch)
    assert res.spills and res.local + res.stack >= 2048 * 4  # the array, on the stack (local memory)
    with pytest.raises(R.LinkError, match="too much shared data"):  # static shared memory > 48 KB
        R.resources(_big_shared_kernel, sig, arch)


def test_the_launch_count_docs_cuda_md_gives_is_the_tools():
    """docs/cuda.md's kernel-function calls and launches of a d12 step at B=16, T=1024 (it said 528
    launches where the tool counts 468), and the zeroing launches among them."""
    import os
    import re

    from numbagpt.config import preset
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "cuda.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cfg = preset("d12")
    calls = sum(count for _, _, count in R.step_calls(cfg, 16, 1024))
    training = [(fn, launch, count) for fn, launch, count in R.step_launches(cfg, 16, 1024, R.ARCHS["sm_90"]["sms"])
                if fn not in ("attention_forward_cached", "matvec_forward")]   # generation's, listed after
    launches = sum(count for *_, count in training)
    zeroing = sum(count for fn, launch, count in training if fn == "matmul_backward" and
                  launch.kernel.py_func.__name__ == "fill_zero_kernel")
    said = re.findall(r"(\d+) kernel-function calls, (\d+) launches \((\d+) of them the zeroing", text)
    assert said == [(str(calls), str(launches), str(zeroing))]
    assert re.findall(r"(\d+) kernel-function calls, 17 a layer and 9 more,\s+and (\d+) launches", text) == \
        [(str(calls), str(launches))]


def test_the_per_kernel_table_of_docs_cuda_md_is_what_ptxas_reports():
    """docs/cuda.md's "Per kernel" table: a row for every kernel, none for a kernel that is gone, each
    with ptxas's registers (sm_80, sm_90) and static shared memory (its 7 bf16 kernels were missing)."""
    import os
    import re
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "cuda.md")
    with open(path, encoding="utf-8") as f:
        text = f.read().split("### Per kernel", 1)[1]
    doc = {m[0]: (int(m[1]), int(m[2]), int(m[3])) for m in
           re.findall(r"^\| `(\w+)` \| [^|]+ \| \d+ \| (\d+) \|[^|]+\|[^|]+\| (\d+) \|[^|]+\|[^|]+\| (\d+) \|$",
                      text, re.M)}
    table = R.kernel_table(ARCHS)
    ptxas = {name: (table[name, "sm_80"].registers, table[name, "sm_90"].registers, table[name, "sm_80"].shared)
             for name, _ in table}
    assert doc == ptxas
