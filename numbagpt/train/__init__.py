"""A training run: its typed config (TrainConfig), the run (train), and its parts — the step, the
learning-rate schedule, the spike guard (outlier), the output directory (rundir) and checkpoints."""
from .config import TrainConfig
from .trainer import StepRecord, TrainResult, train

__all__ = ["TrainConfig", "train", "StepRecord", "TrainResult"]
