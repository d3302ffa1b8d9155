"""One training step, the one every command takes (bin/train_gpt2, its JIT warm-up, bin/profile_gpt2,
bin/test_gpt2): forward and backward over the step's micro-batches, the gradient reduction over the
ranks, clipping, the AdamW update.

The gradient of the step is the mean over its n micro-batches and the R ranks of each micro-batch's
mean-loss gradient. The backward passes add theirs into the gradient buffer, the ranks sum it
(numbagpt.dist), and the one division by n·R happens here: on the norm, and folded into AdamW's
grad_scale together with the clip factor, so nothing makes an extra pass over the buffer.
"""
import math
from dataclasses import dataclass

from ..dist import CollectiveError


@dataclass
class StepResult:
    loss: float    # mean loss over the micro-batches and the ranks
    norm: float    # L2 norm of the mean gradient, before clipping
    lr: float      # the learning rate the update used
    scale: float   # the clip factor applied to the gradient (1.0: not clipped)
    skipped: object = None  # why the update was not applied (the spike guard's Skip), else None


def clip_scale(norm, grad_clip):
    """The factor that brings a gradient of L2 norm `norm` down to `grad_clip` (0: no clipping)."""
    return grad_clip / norm if grad_clip > 0 and norm > grad_clip else 1.0


def train_step(model, batches, *, lr, t, dp=None, grad_clip=1.0, weight_decay=0.0, decay_all=False,
               beta1=0.9, beta2=0.999, eps=1e-8, skip=None, phase=None):
    """One AdamW step (number t, from 1) on `batches`, a list of (inputs, targets) int32 (B, T) arrays,
    one micro-batch each; the AdamW settings as GPT2.update takes them. `dp`: a
    numbagpt.dist.DataParallel over the ranks (None: this process alone). `skip(loss, norm)`, when
    given, decides before the update: a true value (the reason) leaves the parameters and AdamW state
    as they were (the spike guard; loss and norm are the same on every rank, so every rank decides
    alike). `phase(name)`, when given, is called with "forward", "zero_grad", "backward", "update" as
    the step enters each, and with None at the end (the profiler's timing proxy). Returns a
    StepResult; raises dist.CollectiveError, on every rank alike, if the loss or the norm is not
    finite."""
    if not batches:
        raise ValueError("train_step: no batches (a step needs at least one (inputs, targets))")
    mark = phase or (lambda name: None)
    losses = []
    for i, (inputs, targets) in enumerate(batches):
        mark("forward")
        losses.append(model.forward(inputs, targets, train=True))
        if i == 0:   # after the first forward has sized the activations (and their grads)
            mark("zero_grad")
            model.zero_grad()
        mark("backward")
        model.backward()
    mark("update")
    ranks = 1 if dp is None else dp.world.size
    n = len(losses) * ranks                # gradients summed into the buffer
    summed_norm = model.grad_norm() if dp is None else dp.reduce_gradients()
    norm = summed_norm / n
    loss = sum(losses) / len(losses)
    if dp is not None:
        loss = dp.world.mean(loss)
    if not (math.isfinite(loss) and math.isfinite(norm)):  # the same numbers on every rank: all stop here
        mark(None)
        raise CollectiveError(f"step {t}: loss {loss}, gradient norm {norm}: training diverged "
                              f"(lower the learning rate -l, check the data and the model file)")
    scale = clip_scale(norm, grad_clip)
    skipped = skip(loss, norm) if skip is not None else None
    if not skipped:
        model.update(lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, t=t,
                     grad_scale=scale / n, decay_all=decay_all)
        if dp is not None:
            dp.gather_parameters()
    mark(None)
    model.backend.synchronize()
    return StepResult(loss=loss, norm=norm, lr=lr, scale=scale, skipped=skipped)


def warm_up(backend, precision="fp32", training=True):
    """Compile (or load from Numba's cache) every kernel a step in `precision` runs: one train_step of
    a throwaway micro model in that precision (bf16 runs its own GEMM); training=False: every kernel
    of a forward with targets (the losses, as eval_gpt2 scores), one such forward. The kernels'
    argument types don't depend on the sizes."""
    import numpy as np

    from ..config import GPT2Config
    from ..model import GPT2
    cfg = GPT2Config(max_seq_len=4, vocab_size=8, num_layers=1, num_heads=1, channels=4, padded_vocab_size=8)
    model = GPT2(cfg, backend=backend, precision=precision)
    model.init_weights(0)
    tokens = np.zeros((1, 4), dtype=np.int32)
    if training:
        train_step(model, [(tokens, tokens)], lr=1e-3, t=1)
    else:
        model.forward(tokens, tokens)
