"""mini-sd: a tiny Stable Diffusion trained here on the digits at 32x32 (VAE, CLIP text
encoder, UNet2DConditionModel), loadable by diffusers' ``StableDiffusionPipeline`` offline."""
