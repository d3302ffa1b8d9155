"""The z-score outlier detector of llm.c's llmc/outlier_detector.h: the spike guard of -sl / -sg.

It keeps the last `window` values (128, llm.c's window). update(x) pushes x and returns its z-score
(x - mean) / std over the window, which then includes x itself, as in llm.c; NaN while the window
is still filling, 0 when the window is constant. Running sums in float64, as llm.c, so they don't drift.
"""
import math

WINDOW = 128


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

    def check(self, loss, norm):
        """(zloss, zgrad, reason): reason is None to apply the step, else why it is skipped."""
        zloss, zgrad = self.loss.update(loss), self.grad.update(norm)
        if self.loss_z and math.isfinite(zloss) and zloss > self.loss_z:
            return zloss, zgrad, f"loss z-score {zloss:.2f} > {self.loss_z:g}"
        if self.grad_z and math.isfinite(zgrad) and zgrad > self.grad_z:
            return zloss, zgrad, f"grad norm z-score {zgrad:.2f} > {self.grad_z:g}"
        return zloss, zgrad, None

    def describe(self):
        def one(name, z):
            return f"{name} z > {z:g}" if z else f"{name} off"
        return (f"spike guard: skip the update when {one('loss', self.loss_z)}, {one('grad norm', self.grad_z)} "
                f"(z-scores over the last {self.loss.window} steps)")
