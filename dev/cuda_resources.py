"""Registers, spills, shared memory and occupancy of every CUDA kernel, at its real launches — no GPU.

    python dev/cuda_resources.py [--arch sm_80 sm_90] [--shape d12 tiny] [--B 16 --T 1024] [--markdown]

How: each `@cuda.jit` kernel of numbagpt.cuda is compiled with `numba.cuda.compile_ptx` for its
`SIGNATURES` types (the types its launcher passes), and the PTX is linked to a cubin for sm_80 / sm_90
with nvJitLink (the `nvidia-nvjitlink` wheel numba-cuda installs; through `cuda.core.Linker`, the
linker numba-cuda itself uses) in verbose mode, which reports ptxas's figures per kernel: registers per
thread, spill stores/loads, stack, local and static shared memory. The launches are not restated here:
they come from the launchers' own pure plan functions (`matmul.matmul_forward_launches(B, T, C, OC)`
and friends, see numbagpt/cuda/launch.py), called for every kernel call of one training step
(`step_calls`) at the model's shapes. Each launch is then checked against the architecture limits in
`ARCHS` and given its theoretical occupancy (the CUDA occupancy calculator's rules, below).

Occupancy per SM = min over (threads, blocks, registers, shared memory) of how many blocks fit:
  threads:   ⌊max_threads_per_sm / (warps·32)⌋                 (warps = ⌈block/32⌉)
  blocks:    max_blocks_per_sm
  registers: the register file is split over 4 SM sub-partitions; a warp takes ⌈regs·32 / 256⌉·256
             registers from one of them: ⌊⌊regs_per_sm/4 / regs_per_warp⌋·4 / warps⌋
  shared:    ⌊smem_per_sm / ⌈static + dynamic + 1 KB reserved, 128⌉⌋ (max carveout)
Launch failures checked: block > 1024 threads; regs_per_warp·warps > 65,536 ("too many resources
requested for launch"); static + dynamic shared memory > 48 KB (needs the opt-in attribute, which the
launchers never set) or > the opt-in maximum; grid.x > 2³¹−1, grid.y or grid.z > 65,535; zero blocks
per SM. Spills (spill stores/loads, local memory or stack > 0) are reported separately.
"""
import argparse
import functools
import importlib
import inspect
import math
import os
import pkgutil
import re
import sys
import types
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ------------------------------------------------------------------------------------------------
# Architecture limits: NVIDIA's CUDA C++ Programming Guide, "Technical Specifications per Compute
# Capability" table (8.0 and 9.0), and the occupancy calculator's allocation rules (register
# allocation unit 256 per warp, 4 sub-partitions, 1 KB shared memory reserved per block since 8.0,
# shared allocation unit 128 B). SM counts: A100 SXM 108, H100 SXM / H200 132.
ARCHS = {
    "sm_80": dict(gpu="A100", cc=(8, 0), sms=108, regs_per_sm=65536, max_regs_per_block=65536,
                  max_regs_per_thread=255, reg_alloc_unit=256, sub_partitions=4,
                  max_threads_per_block=1024, max_threads_per_sm=2048, max_blocks_per_sm=32,
                  smem_per_sm=164 * 1024, smem_per_block_optin=163 * 1024, smem_per_block_default=48 * 1024,
                  smem_reserved_per_block=1024, smem_alloc_unit=128),
    "sm_90": dict(gpu="H100/H200", cc=(9, 0), sms=132, regs_per_sm=65536, max_regs_per_block=65536,
                  max_regs_per_thread=255, reg_alloc_unit=256, sub_partitions=4,
                  max_threads_per_block=1024, max_threads_per_sm=2048, max_blocks_per_sm=32,
                  smem_per_sm=228 * 1024, smem_per_block_optin=227 * 1024, smem_per_block_default=48 * 1024,
                  smem_reserved_per_block=1024, smem_alloc_unit=128),
}
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
WARP = 32

FLASH_FLOOR = 0.125  # 8 warps: 2 blocks of 128 threads (docs/cuda.md, "Occupancy floors")

# Occupancy floors (warps resident per SM, as a fraction of the 64 an SM holds) per kernel family,
# with the reason in docs/cuda.md ("Resources and occupancy"). A kernel not listed gets DEFAULT_FLOOR.
FLOORS = {
    "gemm": 0.25,         # 64-thread blocks with an 8×8 register tile: ILP hides latency, 8 blocks/SM
    "elementwise": 0.75,  # one element per thread, nothing to hide latency but warps
    "row": 0.5,           # one warp per row (layernorm, softmax, cached attention): memory-bound
    "block_row": 0.5,     # one 256-thread block per row (crossentropy)
    "reduction": 0.5,     # column and grid-stride reductions
    "single_warp": 0.0,   # norm_squared_final: one warp on one SM by design
    "matvec": 0.25,       # generation's matvec: its unrolled dot-product loop keeps many loads in flight
    "flash": FLASH_FLOOR,  # flash attention: register tiles of scores and accumulators, shared-memory operands
}
DEFAULT_FLOOR = 0.5


def family(kernel_name):
    """The occupancy-floor family of a kernel (by its name in its module)."""
    if "gemm" in kernel_name:
        return "gemm"
    if kernel_name.startswith("flash_attention"):
        return "flash"
    if kernel_name == "matvec_kernel":
        return "matvec"
    if kernel_name == "norm_squared_final_kernel":
        return "single_warp"
    if kernel_name.startswith(("softmax", "layernorm_forward", "layernorm_backward_dinp", "attention_cached")):
        return "row"
    if kernel_name.startswith("crossentropy"):
        return "block_row"
    if kernel_name in ("layernorm_backward_dwdb_kernel", "matmul_backward_dbias_kernel",
                       "matmul_backward_dbias_write_kernel",
                       "norm_squared_partial_kernel", "encoder_backward_wpe_kernel"):
        return "reduction"
    return "elementwise"


# ------------------------------------------------------------------------------------------------
# Kernels and their machine code


def kernel_modules():
    import numbagpt.cuda as GPU
    return [importlib.import_module(f"numbagpt.cuda.{info.name}") for info in pkgutil.iter_modules(GPU.__path__)]


def kernels():
    """[(module, name, dispatcher)] of every @cuda.jit kernel (not device function), each once."""
    from numba.cuda.dispatcher import CUDADispatcher
    seen, out = set(), []
    for mod in kernel_modules():
        for name, obj in sorted(vars(mod).items()):
            if isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device", False) and id(obj) not in seen:
                seen.add(id(obj))
                out.append((mod, name, obj))
    return out


@functools.lru_cache(maxsize=None)
def _kernel_table():
    return tuple(kernels())


@functools.lru_cache(maxsize=None)
def ptx(dispatcher, sig, cc):
    """PTX of `dispatcher` for argument types `sig` and compute capability `cc`, with the kernel's own
    options (what Numba compiles at the first launch on such a GPU). Cached per process."""
    from numba import cuda
    opts = dispatcher.targetoptions
    code, _ = cuda.compile_ptx(dispatcher.py_func, sig, cc=cc, fastmath=opts.get("fastmath", False),
                               lineinfo=opts.get("lineinfo", False), debug=opts.get("debug", False),
                               launch_bounds=opts.get("launch_bounds"))
    return code


@dataclass(frozen=True)
class Resources:
    registers: int       # per thread
    spill_stores: int    # bytes
    spill_loads: int     # bytes
    stack: int           # bytes per thread
    local: int           # bytes per thread (lmem)
    shared: int          # static shared memory of the kernel, bytes (without the 1 KB reservation)
    const: int           # cmem[0] bytes (kernel parameters)

    @property
    def spills(self):
        return self.spill_stores + self.spill_loads + self.local + self.stack > 0


_FIELDS = {
    "registers": r"used (\d+) registers", "stack": r"(\d+) stack", "shared": r"(\d+) bytes smem",
    "const": r"(\d+) bytes cmem\[0\]", "local": r"(\d+) bytes lmem",
    "spill_stores": r"(\d+) bytes spill stores", "spill_loads": r"(\d+) bytes spill loads",
}


def parse_link_log(log, reserved=0):
    """Resources from nvJitLink's verbose info log for a single kernel. On sm_90 ptxas counts the
    block's 1 KB system reservation into the kernel's shared memory when it has any (`reserved`): it is
    taken out here and added back, once, by the occupancy rules."""
    vals = {}
    for field, pat in _FIELDS.items():
        m = re.findall(pat, log)
        if not m:
            raise ValueError(f"no '{pat}' in the linker log:\n{log}")
        vals[field] = max(int(x) for x in m)
    if reserved and vals["shared"] >= reserved:
        vals["shared"] -= reserved
    return Resources(**vals)


class LinkError(RuntimeError):
    """ptxas (through nvJitLink) rejected a kernel for an architecture."""


@functools.lru_cache(maxsize=None)
def resources(dispatcher, sig, arch):
    """Resources of a kernel's cubin for `arch` ("sm_80", "sm_90"): PTX → cubin with nvJitLink."""
    from cuda.core import Linker, LinkerOptions, ObjectCode
    a = ARCHS[arch]
    code = ptx(dispatcher, sig, a["cc"])
    opts = dispatcher.targetoptions
    linker = Linker(ObjectCode.from_ptx(code.encode(), name="kernel"),
                    options=LinkerOptions(arch=arch, verbose=True, max_register_count=opts.get("max_registers")))
    try:
        linker.link("cubin")
        log = linker.get_info_log()
    except Exception as e:  # nvJitLinkError: e.g. "uses too much shared data" (static > 48 KB)
        raise LinkError(f"{dispatcher.py_func.__name__} for {arch}: {' '.join(str(e).split())}") from None
    finally:
        linker.close()
    reserved = a["smem_reserved_per_block"] if a["cc"] >= (9, 0) else 0
    return parse_link_log(log, reserved)


def signature_of(module, name):
    """The launcher's argument types of kernel `name` (its first SIGNATURES entry)."""
    return module.SIGNATURES[name][0]


def toolchain_error():
    """None if PTX can be compiled and linked here, else why not (one line)."""
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        from cuda.core import Linker  # noqa: F401  (nvJitLink is loaded at the first link)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM=1: the simulator has no compiler"
    return None


# ------------------------------------------------------------------------------------------------
# Occupancy


def occupancy(res, block, dynamic_shared, arch):
    """Theoretical residency of one launch on one SM: dict of blocks_per_sm, warps_per_sm, occupancy
    (warps / max warps), the limiting factor, and `errors` (launch failures, empty if it launches)."""
    a = ARCHS[arch]
    warps = math.ceil(block / WARP)
    regs_per_warp = math.ceil(res.registers * WARP / a["reg_alloc_unit"]) * a["reg_alloc_unit"]
    user_smem = res.shared + dynamic_shared
    block_smem = math.ceil((user_smem + a["smem_reserved_per_block"]) / a["smem_alloc_unit"]) * a["smem_alloc_unit"]
    errors = []
    if not 0 < block <= a["max_threads_per_block"]:
        errors.append(f"{block} threads per block (limit {a['max_threads_per_block']})")
    if regs_per_warp * warps > a["max_regs_per_block"]:
        errors.append(f"{res.registers} registers x {block} threads = {regs_per_warp * warps} per block "
                      f"(limit {a['max_regs_per_block']})")
    if res.registers > a["max_regs_per_thread"]:
        errors.append(f"{res.registers} registers per thread (limit {a['max_regs_per_thread']})")
    if user_smem > a["smem_per_block_default"]:
        errors.append(f"{user_smem} B shared memory per block > {a['smem_per_block_default']} B without the "
                      "opt-in attribute (cudaFuncAttributeMaxDynamicSharedMemorySize, never set)")
    if user_smem > a["smem_per_block_optin"]:
        errors.append(f"{user_smem} B shared memory per block > the opt-in maximum {a['smem_per_block_optin']} B")
    sub = a["sub_partitions"]
    limits = {
        "threads": a["max_threads_per_sm"] // (warps * WARP) if warps else 0,
        "blocks": a["max_blocks_per_sm"],
        "registers": ((a["regs_per_sm"] // sub // regs_per_warp) * sub) // warps if warps and regs_per_warp else 0,
        "shared": a["smem_per_sm"] // block_smem,
    }
    blocks = min(limits.values())
    if blocks == 0 and not errors:
        errors.append("no block fits on an SM")
    limiter = next(k for k in ("threads", "blocks", "registers", "shared") if limits[k] == blocks)
    max_warps = a["max_threads_per_sm"] // WARP
    return dict(blocks_per_sm=blocks, warps_per_sm=blocks * warps, occupancy=blocks * warps / max_warps,
                limiter=limiter, block_smem=block_smem, errors=errors)


# ------------------------------------------------------------------------------------------------
# The kernel calls of one training step (numbagpt/model.py's forward, backward, grad_norm, update)

def training_kernels():
    """The kernel functions a training step calls (numbagpt.backend's list)."""
    from numbagpt.backend import TRAINING_KERNELS
    return TRAINING_KERNELS


SHAPES = {  # name: (preset, B, T)
    "d12": ("d12", 16, 1024),
    "tiny": ("tiny", 4, 64),
}


RECOMPUTE = 1  # bin/train_gpt2's default -r: GELU's output is recomputed in the backward pass


def step_calls(config, B, T, recompute=RECOMPUTE):
    """[(function, size arguments, calls per step)] of one training step of `config` at (B, T): the
    model's kernel calls (train_gpt2.c's order), each with the size arguments it passes (a bias's
    presence, and matmul_backward's accumulate: False, the backward right after zero_grad writes dweight
    and dbias); recompute as GPT2(recompute=...): 1 adds a GELU forward per layer to the backward pass,
    2 also both layernorms."""
    C, NH, L = config.channels, config.num_heads, config.num_layers
    V, Vp = config.vocab_size, config.padded_vocab_size
    BTC = B * T * C
    from numbagpt.layout import num_parameters
    P = num_parameters(config)
    return [
        ("encoder_forward", (B, T, C), 1),
        ("layernorm_forward", (B, T, C), 1),
        ("matmul_forward", (B, T, C, 3 * C, True), L),
        ("attention_forward", (B, T, C, NH), L),
        ("matmul_forward", (B, T, C, C, True), L),
        ("fused_residual_layernorm_forward", (B, T, C), 2 * L),
        ("matmul_forward", (B, T, C, 4 * C, True), L),
        ("gelu_forward", (4 * BTC,), L),
        ("matmul_forward", (B, T, 4 * C, C, True), L),
        ("matmul_forward", (B, T, C, Vp, False), 1),
        ("crossentropy_forward_backward", (B, T, V, Vp), 1),   # forward(train=True): loss and dlogits
        ("matmul_backward", (B, T, C, Vp, False, False), 1),
        ("layernorm_backward", (B, T, C), 2 * L + 1),
        ("matmul_backward", (B, T, 4 * C, C, True, False), L),
        ("gelu_backward", (4 * BTC,), L),
        ("matmul_backward", (B, T, C, 4 * C, True, False), L),
        ("matmul_backward", (B, T, C, C, True, False), L),
        ("attention_backward", (B, T, C, NH), L),
        ("matmul_backward", (B, T, C, 3 * C, True, False), L),
        ("encoder_backward", (B, T, C), 1),
        ("global_norm_squared", (P,), 1),
        ("adamw_update", (P,), 1),
    ] + ([("gelu_forward", (4 * BTC,), L)] if recompute >= 1 else []) \
      + ([("layernorm_forward", (B, T, C), 2 * L)] if recompute >= 2 else [])


def zeroing_calls(config, B, T, recompute=RECOMPUTE):
    """[("fill_zero", (elements,), calls)]: the model zeroes the parameter gradients that no matmul_backward
    writes (zero_grad: three runs of the buffer), the activation gradients the kernels accumulate into,
    and, recomputing, the gradient of each shared (recomputed) buffer once per layer."""
    from numbagpt.layout import activation_layout, parameter_layout
    from numbagpt.model import ACCUMULATED_GRADS, WRITTEN_GRADS
    BTC, L = B * T * config.channels, config.num_layers
    sizes = activation_layout(config, B, T, recompute).sizes
    zeroed = parameter_layout(config).runs(lambda name: name not in WRITTEN_GRADS)
    return ([("fill_zero", (end - start,), 1) for start, end in zeroed]
            + [("fill_zero", (sizes[name],), 1) for name in ACCUMULATED_GRADS]
            + ([("fill_zero", (4 * BTC,), L)] if recompute >= 1 else [])
            + ([("fill_zero", (BTC,), 2 * L)] if recompute >= 2 else []))


def plan(function, sizes, sms):
    """The launches of one call of a backend function, from its module's `<function>_launches`."""
    for mod in kernel_modules():
        fn = getattr(mod, function + "_launches", None)
        if fn is not None:
            if function in ("matmul_backward", "matmul_backward_bf16"):
                return fn(*sizes, sms=sms)
            return fn(*sizes)
    raise KeyError(f"no {function}_launches in numbagpt.cuda")


def fill_zero_launch(n):
    """fill_zero's launch (numbagpt/cuda/__init__.py: one thread per element, BLOCK_FILL per block)."""
    from numbagpt.cuda.launch import fill_zero_launch
    return fill_zero_launch(n)


def generation_calls(config):
    """[(function, size arguments, calls)] of generation with the KV cache: a prefill of maxT − 1
    prompt tokens and the decoding of one token at the last position (batch 1), whose matmuls are
    matvecs (the two widest shown: the LM head and fc)."""
    C, NH, maxT, Vp = config.channels, config.num_heads, config.max_seq_len, config.padded_vocab_size
    return [("attention_forward_cached", (1, maxT - 1, 0, C, NH, maxT), 1),
            ("attention_forward_cached", (1, 1, maxT - 1, C, NH, maxT), 1),
            ("matvec_forward", (1, C, Vp), 1), ("matvec_forward", (1, C, 4 * C), 1)]


def step_launches(config, B, T, sms):
    """[(function, Launch, count)] of one training step, fill_zero of the gradients included, then
    generation's KV-cache attention launches."""
    out = [(function, fill_zero_launch(sizes[0]), count) for function, sizes, count in zeroing_calls(config, B, T)]
    for function, sizes, count in step_calls(config, B, T) + generation_calls(config):
        for launch in plan(function, sizes, sms):
            out.append((function, launch, count))
    return out


# ------------------------------------------------------------------------------------------------
# Roofline: FLOPs and bytes of each call from the profiler's cost model (numbagpt.costs.kernel_cost)

# Published peaks (NVIDIA's H100 and H200 datasheets): FP32 non-tensor 67 TFLOP/s on both (SXM),
# HBM3 3.35 TB/s (H100 SXM 80 GB), HBM3e 4.8 TB/s (H200 141 GB).
GPUS = {
    "H100": dict(flops=67e12, bandwidth=3.35e12),
    "H200": dict(flops=67e12, bandwidth=4.8e12),
}
# Expected efficiency of our kernels against those peaks (assumptions, reasons in docs/cuda.md):
# the scalar-load GEMM issues 80 instructions (64 FFMA + 16 LDS) per 64 FMAs, its shared-memory reads
# alone run at the FMA rate, and a K step's global loads are not overlapped with the previous step's
# math (one barrier-separated tile, 25% occupancy): 40% of FP32 peak; streaming kernels 80% of HBM.
GEMM_EFFICIENCY = 0.40
MEMORY_EFFICIENCY = 0.80
# The flash attention is one fused kernel per pass (no (B, NH, T, T) maps): compute-bound like a GEMM.
COMPUTE_BOUND_FUNCTIONS = ("matmul_forward", "matmul_backward", "attention_forward", "attention_backward")
PHASED_FUNCTIONS = ()  # functions whose compute and memory phases add up (none since the flash attention)


def call_cost(function, sizes):
    """(flops, bytes) of one call, from numbagpt.costs.kernel_cost with the sizes in place of the
    arrays the cost model does not read (bias / dbias: present or None, and matmul_backward's
    accumulate, as the sizes say)."""
    import numbagpt.cuda as GPU
    from numbagpt.costs import kernel_cost
    if function == "fill_zero":
        return kernel_cost("fill_zero", types.SimpleNamespace(nbytes=4 * sizes[0]))
    params = list(inspect.signature(getattr(GPU, function)).parameters)
    names = [p for p in params if p in SIZE_NAMES]
    values = dict(zip(names, sizes))
    has_bias = sizes[len(names)] if len(sizes) > len(names) else False
    accumulate = sizes[len(names) + 1] if len(sizes) > len(names) + 1 else True
    args = []
    for p in params:
        if p in values:
            args.append(values[p])
        elif p in ("bias", "dbias"):
            args.append(np.zeros(1, np.float32) if has_bias else None)
        elif p == "t":
            args.append(1)
        elif p == "accumulate":
            args.append(accumulate)
        else:
            args.append(None)
    return kernel_cost(function, *args)


SIZE_NAMES = ("B", "T", "C", "OC", "NH", "V", "Vp", "N")


def roofline(config, B, T, gpu):
    """[(function, calls, flops, bytes, intensity, bound, roofline s, expected s)] per backend function
    over one training step (summed over its calls), on `gpu` (a GPUS key)."""
    g = GPUS[gpu]
    ridge = g["flops"] / g["bandwidth"]
    per = {}
    for function, sizes, count in step_calls(config, B, T) + zeroing_calls(config, B, T):
        flops, nbytes = call_cost(function, sizes)
        t_flop, t_mem = flops / g["flops"], nbytes / g["bandwidth"]
        if function in PHASED_FUNCTIONS:
            expected = t_flop / GEMM_EFFICIENCY + t_mem / MEMORY_EFFICIENCY
        elif function in COMPUTE_BOUND_FUNCTIONS:
            expected = max(t_flop / GEMM_EFFICIENCY, t_mem / MEMORY_EFFICIENCY)
        else:
            expected = max(t_flop, t_mem / MEMORY_EFFICIENCY)
        row = per.setdefault(function, [0, 0, 0, 0.0, 0.0])
        row[0] += count
        row[1] += count * flops
        row[2] += count * nbytes
        row[3] += count * max(t_flop, t_mem)
        row[4] += count * expected
    out = []
    for function, (calls, flops, nbytes, t_roof, t_exp) in per.items():
        ai = flops / nbytes if nbytes else float("inf")
        out.append((function, calls, flops, nbytes, ai, "compute" if ai > ridge else "memory", t_roof, t_exp))
    return out


def format_roofline(rows, gpu, markdown=False):
    g = GPUS[gpu]
    head = ("function", "calls", "GFLOP", "GB", "FLOP/B", "bound", "roofline ms", "expected ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] if markdown else ["  ".join(head)]
    tot = [0, 0, 0.0, 0.0]
    for function, calls, flops, nbytes, ai, bound, t_roof, t_exp in sorted(rows, key=lambda r: -r[7]):
        cells = (function, str(calls), f"{flops / 1e9:.1f}", f"{nbytes / 1e9:.2f}", f"{ai:.1f}", bound,
                 f"{t_roof * 1e3:.2f}", f"{t_exp * 1e3:.2f}")
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
        tot[0] += flops
        tot[1] += nbytes
        tot[2] += t_roof
        tot[3] += t_exp
    cells = ("**step**" if markdown else "step", "", f"{tot[0] / 1e9:.1f}", f"{tot[1] / 1e9:.2f}",
             f"{tot[0] / tot[1]:.1f}", f"ridge {g['flops'] / g['bandwidth']:.1f}", f"{tot[2] * 1e3:.1f}",
             f"{tot[3] * 1e3:.1f}")
    lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The report


@dataclass
class Row:
    shape: str
    arch: str
    function: str
    kernel: str
    grid: tuple
    block: int
    dynamic_shared: int
    res: Resources
    occ: dict
    floor: float
    count: int

    @property
    def problems(self):
        out = list(self.occ["errors"]) + grid_errors_of(self.grid)
        if self.res.spills:
            out.append(f"spills: {self.res.spill_stores} B stores, {self.res.spill_loads} B loads, "
                       f"{self.res.local} B local, {self.res.stack} B stack")
        if not self.occ["errors"] and self.occ["occupancy"] < self.floor:
            out.append(f"occupancy {self.occ['occupancy']:.0%} < the {family(self.kernel)} floor {self.floor:.0%}")
        return out


def grid_errors_of(g):
    return [f"grid {g}: dimension {i} = {g[i]} > {MAX_GRID[i]}" for i in range(3) if g[i] > MAX_GRID[i]]


def report(shapes=("d12", "tiny"), archs=("sm_80", "sm_90"), B=None, T=None):
    """[Row] for every distinct (shape, arch, function, kernel, grid, block) launch of a training step."""
    from numbagpt.config import preset
    table = {disp: (mod, name) for mod, name, disp in _kernel_table()}
    rows = {}
    for shape in shapes:
        name, b, t = SHAPES[shape]
        b, t = B or b, T or t
        config = preset(name)
        for arch in archs:
            for function, launch, count in step_launches(config, b, t, ARCHS[arch]["sms"]):
                if launch.blocks() == 0:
                    continue
                mod, kname = table[launch.kernel]
                res = resources(launch.kernel, signature_of(mod, kname), arch)
                key = (shape, arch, function, kname, launch.grid3(), launch.block)
                if key in rows:
                    rows[key].count += count
                    continue
                occ = occupancy(res, launch.block, launch.shared, arch)
                rows[key] = Row(shape, arch, function, kname, launch.grid3(), launch.block, launch.shared, res, occ,
                                FLOORS.get(family(kname), DEFAULT_FLOOR), count)
    return list(rows.values())


def kernel_table(archs=("sm_80", "sm_90")):
    """{(kernel name, arch): Resources} for every kernel (all of them, launched in a step or not)."""
    return {(name, arch): resources(disp, signature_of(mod, name), arch)
            for mod, name, disp in _kernel_table() for arch in archs}


def format_rows(rows, markdown=False):
    head = ("function", "kernel", "grid", "block", "regs", "spill st/ld", "smem st+dyn", "blocks/SM",
            "warps/SM", "occupancy", "limit", "waves", "calls", "problems")
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        lines.append("  ".join(head))
    for r in rows:
        sms = ARCHS[r.arch]["sms"]
        per_wave = max(1, r.occ["blocks_per_sm"] * sms)
        blocks = r.grid[0] * r.grid[1] * r.grid[2]
        cells = (r.function, r.kernel, "×".join(str(g) for g in r.grid), str(r.block), str(r.res.registers),
                 f"{r.res.spill_stores}/{r.res.spill_loads}", f"{r.res.shared}+{r.dynamic_shared}",
                 str(r.occ["blocks_per_sm"]), str(r.occ["warps_per_sm"]), f"{r.occ['occupancy']:.0%}",
                 r.occ["limiter"], f"{blocks / per_wave:.2f}", str(r.count), "; ".join(r.problems) or "ok")
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
    return "\n".join(lines)


def format_kernel_table(table, markdown=False):
    archs = sorted({arch for _, arch in table})
    names = sorted({name for name, _ in table})
    head = ["kernel"] + [f"{arch} {what}" for arch in archs for what in ("regs", "spill st/ld", "smem", "cmem")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] if markdown else ["  ".join(head)]
    for name in names:
        cells = [name]
        for arch in archs:
            r = table[(name, arch)]
            cells += [str(r.registers), f"{r.spill_stores}/{r.spill_loads}", str(r.shared), str(r.const)]
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--shape", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--B", type=int, default=None, help="batch size (default: 16 for d12, 4 for tiny)")
    ap.add_argument("--T", type=int, default=None, help="sequence length (default: 1024 for d12, 64 for tiny)")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables (for docs/cuda.md)")
    ap.add_argument("--roofline", action="store_true",
                    help="only the roofline estimate of a d12 step (B=16 T=1024 unless --B/--T) on H100 and H200")
    args = ap.parse_args(argv)
    for flag, v in (("--B", args.B), ("--T", args.T)):
        if v is not None and v < 1:   # not taken for "not given" (B or default) nor a negative table
            ap.error(f"{flag} must be positive, got {v}")
    if args.roofline:
        from numbagpt.config import preset
        b, t = args.B or SHAPES["d12"][1], args.T or SHAPES["d12"][2]
        for gpu in GPUS:
            print(f"\nd12 B={b} T={t} on {gpu} (FP32 {GPUS[gpu]['flops'] / 1e12:.0f} TFLOP/s, "
                  f"HBM {GPUS[gpu]['bandwidth'] / 1e12:.2f} TB/s):\n")
            print(format_roofline(roofline(preset("d12"), b, t, gpu), gpu, args.markdown))
        return 0
    err = toolchain_error()
    if err:
        print(f"cannot compile CUDA kernels here: {err}", file=sys.stderr)
        return 2
    print("Per kernel (cubin, ptxas via nvJitLink):\n")
    print(format_kernel_table(kernel_table(args.arch), args.markdown))
    rows = report(args.shape, args.arch, args.B, args.T)
    bad = 0
    for shape in args.shape:
        for arch in args.arch:
            sel = [r for r in rows if r.shape == shape and r.arch == arch]
            if not sel:
                continue
            _, b, t = SHAPES[shape]
            print(f"\n{shape} B={args.B or b} T={args.T or t} on {arch} ({ARCHS[arch]['gpu']}, "
                  f"{ARCHS[arch]['sms']} SMs):\n")
            print(format_rows(sel, args.markdown))
            bad += sum(1 for r in sel if r.problems)
    print(f"\n{bad} launch(es) with problems" if bad else "\nall launches fit, no spills, occupancy floors met")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
