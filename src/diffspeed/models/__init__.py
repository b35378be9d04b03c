"""The embedded models: the digits teacher and its classifier, and mini-sd (a tiny Stable
Diffusion). The only package that knows their labels, prompts and shapes."""

from diffspeed.models.minisd.quality import mini_sd_path

__all__ = ["mini_sd_path"]
