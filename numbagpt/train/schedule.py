"""Learning-rate schedules, as llm.c's llmc/schedulers.h defines them.

All but constant warm up linearly over the first `warmup` steps, lr * (step + 1) / warmup, then:
    cosine    min_lr + (lr - min_lr) * (1 + cos(pi * r)) / 2,   r = (step - warmup) / (steps - warmup)
    linear    lr - r * (lr - min_lr)
    constant  lr (and no warmup: llm.c's constant schedule ignores -u)
    wsd       warmup, stable at lr, then over the last 20% of the steps (from d = int(0.8 * steps))
              min_lr + (1 - sqrt((step - d) / (steps - d))) * (lr - min_lr)
with min_lr = lr * final_frac. `steps` is the number of optimizer steps of the run; step counts from 0.
"""
import math

SCHEDULES = ("cosine", "linear", "constant", "wsd")
WSD_DECAY_START = 0.8  # wsd decays over the last 20% of the steps (llm.c's share)


class LRSchedule:
    """lr(step) for `steps` optimizer steps: `kind` one of SCHEDULES, peak `lr`, `warmup` steps,
    decay to `final_frac` * lr at the end."""

    def __init__(self, kind, lr, warmup, steps, final_frac):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
        if warmup < 0:
            raise ValueError(f"warmup steps must be >= 0, got {warmup}")
        if steps <= 0:
            raise ValueError(f"the schedule needs a positive number of steps, got {steps}")
        if final_frac < 0:
            raise ValueError(f"final learning-rate fraction must be >= 0, got {final_frac}")
        self.kind, self.lr, self.warmup, self.steps, self.final_frac = kind, lr, warmup, steps, final_frac
        self.decay_start = int(WSD_DECAY_START * steps)

    def __call__(self, step):
        lr, min_lr = self.lr, self.lr * self.final_frac
        if self.kind == "constant":
            return lr
        if step < self.warmup:
            return lr * (step + 1) / self.warmup
        if self.kind == "wsd":
            if step < self.decay_start:
                return lr
            r = (step - self.decay_start) / (self.steps - self.decay_start)
            return min_lr + (1.0 - math.sqrt(min(r, 1.0))) * (lr - min_lr)
        # warmup == steps leaves no decay steps; the ratio is then 0 (llm.c would divide by zero).
        r = min(1.0, (step - self.warmup) / (self.steps - self.warmup)) if self.steps > self.warmup else 0.0
        if self.kind == "cosine":
            return min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (lr - min_lr)
        return lr - r * (lr - min_lr)  # linear

    def describe(self):
        """One line for the startup log."""
        if self.kind == "constant":
            return f"constant lr {self.lr:g}" + (f" (no warmup: -u {self.warmup} is ignored)" if self.warmup else "")
        # steps counted from 1, as the step lines count them (internal step s is line s + 1); as in
        # llm.c the decay would reach its floor at internal step -x, one past the last
        hold = f", held through step {self.decay_start + 1} (the last 20% decay)" if self.kind == "wsd" else ""
        return (f"{self.kind}: warmup {self.warmup} steps to lr {self.lr:g}{hold}, decay toward {self.final_frac:g} "
                f"x lr = {self.lr * self.final_frac:g} (the last step, {self.steps}, at lr {self(self.steps - 1):.3g})")
