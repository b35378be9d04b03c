"""The embedded models: the digits teacher and its classifier, and mini-sd (a tiny Stable
Diffusion). The only package that knows their labels, prompts and shapes."""

from diffspeed.models.minisd.lora import mini_sd_lcm_lora_path
from diffspeed.models.minisd.quality import mini_sd_path
from diffspeed.models.minisd.student import mini_sd_student_path, student_pipeline

__all__ = ["mini_sd_lcm_lora_path", "mini_sd_path", "mini_sd_student_path", "student_pipeline"]
