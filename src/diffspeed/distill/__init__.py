"""Step distillation: one training loop (HF Accelerate) and one small loss per method.

``train(student, loss, TrainConfig(...), out_dir, data=...)`` runs any loss
``loss(student, teacher, x0, cond, ctx) -> [B]``; the methods (knowledge distillation,
progressive distillation, guided distillation) are losses plus a short driver each.
"""

from diffspeed.distill.trainer import (
    CheckpointError,
    LossContext,
    TrainConfig,
    TrainData,
    TrainingDivergedError,
    TrainResult,
    module_tensors,
    step_generator,
    train,
)

__all__ = [
    "CheckpointError",
    "LossContext",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingDivergedError",
    "module_tensors",
    "step_generator",
    "train",
]
