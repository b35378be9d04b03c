"""Step distillation: one training loop (HF Accelerate) and one small loss per method.

``train(student, loss, TrainConfig(...), out_dir, data=...)`` runs any loss
``loss(student, teacher, x0, cond, ctx) -> [B]``; the methods (knowledge distillation,
progressive distillation, guided distillation) are losses plus a short driver each.
Students load with :func:`load_student` (``(denoiser, recipe)``) and sample with
:func:`sample_student` (``diffspeed.sample`` with the recorded solver and sigmas).
"""

from diffspeed.distill.guided import GuidanceLoss, Guided, distill_guided
from diffspeed.distill.kd import KD, KDLoss, distill_kd, teacher_dataset
from diffspeed.distill.progressive import Progressive, ProgressiveLoss, distill_progressive
from diffspeed.distill.students import (
    Recipe,
    load_student,
    make_student,
    sample_student,
    save_student,
    shipped_students,
)
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
from diffspeed.distill.wcond import WCondUNet, WEmbedConfig, load_wcond, save_wcond

__all__ = [
    "KD",
    "CheckpointError",
    "GuidanceLoss",
    "Guided",
    "KDLoss",
    "LossContext",
    "Progressive",
    "ProgressiveLoss",
    "Recipe",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingDivergedError",
    "WCondUNet",
    "WEmbedConfig",
    "distill_guided",
    "distill_kd",
    "distill_progressive",
    "load_student",
    "load_wcond",
    "make_student",
    "module_tensors",
    "sample_student",
    "save_student",
    "save_wcond",
    "shipped_students",
    "step_generator",
    "teacher_dataset",
    "train",
]
