"""Step distillation: one verb, one config per method, one shared training loop.

``diffspeed.distill(teacher, config, train=TrainConfig(...), out=..., data=...)`` runs any
method registered in :data:`DISTILLERS` (progressive, guided, kd, cd, ct, lcm, lcm-lora) on
any denoiser whose conditioning spec it can read; this package is itself callable as that
verb. A method is a frozen config plus a per-sample loss
``loss(student, teacher, x0, cond, ctx) -> [B]`` that the loop (:func:`train`, HF
Accelerate) minimises. Students load with :func:`load_student` (``(denoiser, recipe)``) and
sample with :func:`sample_student` (``diffspeed.sample`` with the recorded solver and sigmas).
"""

import sys
import types
from typing import Any

from diffspeed.distill.cd import CD, CDLoss
from diffspeed.distill.ct import CT, CTLoss
from diffspeed.distill.guided import GuidanceLoss, Guided
from diffspeed.distill.kd import KD, KDLoss, teacher_dataset
from diffspeed.distill.lcm import LCM, LCMLoss
from diffspeed.distill.lora import LCMLoRA, LoRA
from diffspeed.distill.methods import DISTILLERS, MethodConfig, distill
from diffspeed.distill.progressive import Progressive, ProgressiveLoss
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
from diffspeed.distill.wcond import WCondUNet, WEmbedConfig

__all__ = [
    "CD",
    "CT",
    "DISTILLERS",
    "KD",
    "LCM",
    "CDLoss",
    "CTLoss",
    "CheckpointError",
    "GuidanceLoss",
    "Guided",
    "KDLoss",
    "LCMLoRA",
    "LCMLoss",
    "LoRA",
    "LossContext",
    "MethodConfig",
    "Progressive",
    "ProgressiveLoss",
    "Recipe",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingDivergedError",
    "WCondUNet",
    "WEmbedConfig",
    "distill",
    "load_student",
    "make_student",
    "module_tensors",
    "sample_student",
    "save_student",
    "shipped_students",
    "step_generator",
    "teacher_dataset",
    "train",
]


class _Verb(types.ModuleType):
    """This package, callable as :func:`~diffspeed.distill.methods.distill`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return distill(*args, **kwargs)


sys.modules[__name__].__class__ = _Verb
