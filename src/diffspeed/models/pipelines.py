"""A diffusers pipeline around the digits teacher's UNet that loads LCM-LoRA adapters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def lcm_pipeline(unet: nn.Module | None = None) -> Any:
    """A diffusers pipeline (LCM scheduler) around the teacher's UNet that loads LoRAs.

    ``pipe.load_lora_weights(adapter_dir)`` is diffusers' own loader
    (``StableDiffusionLoraLoaderMixin``); ``pipe(class_labels, num_inference_steps,
    generator, strength)`` samples ``[B, 1, 8, 8]`` images with ``diffusers.LCMScheduler`` on
    the teacher's betas (``strength``: the adapter's trained top, in ``diffspeed_lora.json``).
    """
    from diffusers import DiffusionPipeline, LCMScheduler
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    from diffspeed.distill.lora import peft_unet
    from diffspeed.models.teacher import SCHEDULER_CONFIG, load_teacher

    class LCMDigitsPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
        """Class-conditional LCM sampling with a LoRA-loadable UNet."""

        _lora_loadable_modules = ["unet"]
        text_encoder = None  # the mixin's loader also looks for a text encoder

        def __init__(self, unet: nn.Module, scheduler: Any) -> None:
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler)

        def __call__(
            self,
            class_labels: torch.Tensor,
            num_inference_steps: int = 4,
            generator: torch.Generator | None = None,
            strength: float = 1.0,
        ) -> torch.Tensor:
            size = self.unet.config.sample_size
            shape = (len(class_labels), self.unet.config.in_channels, size, size)
            x = torch.randn(shape, generator=generator).to(self.unet.device, self.unet.dtype)
            self.scheduler.set_timesteps(num_inference_steps, strength=strength)
            for t in self.scheduler.timesteps:
                eps = self.unet(x, t, class_labels=class_labels).sample
                x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
            return x

    if unet is None:
        unet = load_teacher().model
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
    sched = LCMScheduler(**{k: SCHEDULER_CONFIG[k] for k in keys})
    return LCMDigitsPipeline(peft_unet(unet), sched)
