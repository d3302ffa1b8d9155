"""Reading x86-64 assembly that Numba prints (inspect_asm), for the tests of the GEMM micro-kernels."""
import re


def inner_loop(asm, op, n):
    """The shortest loop (text from a label to the branch back to it) with at least n `op` instructions:
    the micro-kernel's k loop, not the single-k tail LLVM may lay out around the two-k main loop."""
    loops = []
    for m in re.finditer(r"^(\.?[A-Za-z_0-9.]+):", asm, re.M):
        back = re.search(r"^\s*j\w+\s+" + re.escape(m.group(1)) + r"\s*$", asm[m.end():], re.M)
        if back:
            loops.append(asm[m.start():m.end() + back.end()])
    return min((blk for blk in loops if len(re.findall(op, blk)) >= n), key=len)


def stack_accesses(asm, loop):
    """The instructions of `loop` that address the stack (spills and reloads): those relative to %rsp,
    and to %rbp where the function holding the loop keeps it as the frame pointer (`movq %rsp, %rbp`).
    Without a frame pointer LLVM allocates %rbp like any other register (LLVM 14-20 put a panel pointer
    there: numba 0.60-0.65), and an access through it is an ordinary load."""
    at = asm.index(loop)   # the function holding the loop: from the symbol before it to the next one
    starts = [m.start() for m in re.finditer(r"^[A-Za-z_][\w.$]*:", asm, re.M)]
    function = asm[max([s for s in starts if s <= at], default=0):min([s for s in starts if s > at], default=len(asm))]
    frame = re.search(r"^\s*movq\s+%rsp,\s*%rbp\s*$", function, re.M) is not None
    stack = r"\(%rsp[,)]" + (r"|\(%rbp[,)]" if frame else "")
    return [line.strip() for line in loop.splitlines() if re.search(stack, line)]
