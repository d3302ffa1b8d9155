"""The z-score outlier detector of llm.c's llmc/outlier_detector.h: the spike guard of -sl / -sg.

It keeps the last `window` values (128, llm.c's window). update(x) pushes x and returns its z-score
(x - mean) / std over the window, which then includes x itself, as in llm.c; NaN while the window
is still filling, 0 when the window is constant. Running sums in float64, as llm.c, so they don't drift.
"""
import math
from typing import NamedTuple

WINDOW = 128


class Skip(NamedTuple):
    """Why a step's update was skipped: `what` ("loss" or "grad norm") had z-score `z` > `threshold`."""
    what: str
    z: float
    threshold: float

    def __str__(self):
        return f"{self.what} z-score of {self.z:.2f} (> {self.threshold:g})"


class OutlierDetector:
    def __init__(self, window=WINDOW):
        if window < 2:
            raise ValueError(f"the outlier window needs at least 2 values, got {window}")
        self.window = window
        self.buffer = [0.0] * window
        self.count = 0   # values seen, up to `window`
        self.index = 0   # the oldest value once the window is full
        self.sum = 0.0
        self.sum_sq = 0.0

    def update(self, x):
        x = float(x)
        if self.count < self.window:
            self.buffer[self.count] = x
            self.count += 1
            self.sum += x
            self.sum_sq += x * x
            return math.nan
        old = self.buffer[self.index]
        self.buffer[self.index] = x
        self.index = (self.index + 1) % self.window
        self.sum += x - old
        self.sum_sq += x * x - old * old
        mean = self.sum / self.window
        variance = self.sum_sq / self.window - mean * mean
        # max(0, .): cancellation in the running sums can leave a tiny negative variance.
        std = math.sqrt(max(variance, 0.0))
        return 0.0 if std == 0.0 else (x - mean) / std

    def get_state(self):
        """For checkpoints: enough to continue the same z-scores after a resume."""
        return dict(buffer=list(self.buffer), count=self.count, index=self.index, sum=self.sum, sum_sq=self.sum_sq)

    def set_state(self, state):
        if len(state["buffer"]) != self.window:
            raise ValueError(f"an outlier detector state of a {len(state['buffer'])}-value window, "
                             f"this detector's is {self.window}")
        self.buffer = [float(v) for v in state["buffer"]]
        self.count, self.index = int(state["count"]), int(state["index"])
        self.sum, self.sum_sq = float(state["sum"]), float(state["sum_sq"])


class SpikeGuard:
    """-sl/--skip-update-lossz and -sg/--skip-update-gradz: skip an update whose loss or gradient
    norm z-score exceeds its threshold (0 turns that check off). Both detectors see every step,
    applied or not, as llm.c's do."""

    def __init__(self, loss_z=0.0, grad_z=0.0, window=WINDOW):
        if loss_z < 0 or grad_z < 0:
            raise ValueError("z-score thresholds must be >= 0 (0: off)")
        self.loss_z, self.grad_z = loss_z, grad_z
        self.loss = OutlierDetector(window)
        self.grad = OutlierDetector(window)
        self.zloss = self.zgrad = math.nan

    def check(self, loss, norm):
        """None to apply the step, else a Skip saying which z-score exceeded its threshold. The
        step's z-scores stay in `zloss` and `zgrad` (NaN while the window fills)."""
        self.zloss, self.zgrad = self.loss.update(loss), self.grad.update(norm)
        if self.loss_z and math.isfinite(self.zloss) and self.zloss > self.loss_z:
            return Skip("loss", self.zloss, self.loss_z)
        if self.grad_z and math.isfinite(self.zgrad) and self.zgrad > self.grad_z:
            return Skip("grad norm", self.zgrad, self.grad_z)
        return None

    def get_state(self):
        """[the loss detector's state, the grad norm detector's]: what a checkpoint keeps, so that a
        resumed run scores (and skips) every step as the uninterrupted run does."""
        return [self.loss.get_state(), self.grad.get_state()]

    def set_state(self, states):
        loss, grad = states
        self.loss.set_state(loss)
        self.grad.set_state(grad)

    def describe(self):
        def one(name, z):
            return f"{name} z > {z:g}" if z else f"{name} off"
        return (f"spike guard: skip the update when {one('loss', self.loss_z)}, {one('grad norm', self.grad_z)} "
                f"(z-scores over the last {self.loss.window} steps)")
