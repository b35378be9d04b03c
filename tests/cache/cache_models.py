"""Tiny randomly initialised diffusers models for the cache tests (CPU, milliseconds each)."""

import torch
from tiny_sd import tiny_text_unet

import diffspeed
from diffspeed.models.teacher import build_scheduler, build_unet


def tiny_unet_cond():
    return tiny_text_unet(encoder_hid_dim=12)


def tiny_dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,  # DiTPipeline uses 1000 as the null class
    ).eval()


def tiny_pixart():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        cross_attention_dim=16,
        caption_channels=12,
        sample_size=8,
        patch_size=2,
        use_additional_conditions=False,
    ).eval()


def tiny_sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=12,
        caption_projection_dim=16,
        pooled_projection_dim=6,
        pos_embed_max_size=16,
    ).eval()


def tiny_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=8,
        out_channels=8,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=12,
        pooled_projection_dim=6,
        axes_dims_rope=(2, 2, 4),
    ).eval()


class Case:
    """A model, a denoiser over it, noise and conditioning for ``diffspeed.sample``."""

    def __init__(self, name, model, shape, cond, wrap_net=None):
        self.name, self.model = name, model
        net = wrap_net(model) if wrap_net else model
        self.den = diffspeed.wrap(net, "epsilon", build_scheduler().alphas_cumprod)
        self.den.model = model
        g = torch.Generator().manual_seed(1)
        self.noise = torch.randn((2, *shape), generator=g)
        self.cond = cond

    def run(self, solver="ddim", steps=4, den=None):
        return diffspeed.sample(den or self.den, self.noise, solver, steps, cond=self.cond)


def _cases():
    g = torch.Generator().manual_seed(2)
    text = torch.randn(2, 5, 12, generator=g)
    pooled = torch.randn(2, 6, generator=g)

    def flux_net(m):
        # Flux takes packed latents [B, HW, C] and position ids; present it as [B, C, H, W].
        img_ids = torch.stack(
            torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"),
            -1,
        ).reshape(-1, 3)

        def net(x, t, **cond):
            b, c, h, w = x.shape
            seq = x.flatten(2).transpose(1, 2)
            out = m(
                seq,
                timestep=t / 1000,
                img_ids=img_ids,
                txt_ids=torch.zeros(cond["encoder_hidden_states"].shape[1], 3),
                **cond,
            ).sample
            return out.transpose(1, 2).reshape(b, c, h, w)

        return net

    def kw_net(m):
        # SD3 / PixArt take ``timestep`` after the text embeddings: pass it by keyword.
        def net(x, t, **cond):
            return m(x, timestep=t, **cond).sample

        return net

    return {
        "teacher": lambda: Case(
            "teacher", build_unet().eval(), (1, 8, 8), {"class_labels": torch.tensor([3, 7])}
        ),
        "unet_cond": lambda: Case(
            "unet_cond", tiny_unet_cond(), (4, 8, 8), {"encoder_hidden_states": text}
        ),
        "dit": lambda: Case("dit", tiny_dit(), (4, 8, 8), {"class_labels": torch.tensor([1, 2])}),
        "pixart": lambda: Case(
            "pixart",
            tiny_pixart(),
            (4, 8, 8),
            {"encoder_hidden_states": text, "added_cond_kwargs": {}},
            kw_net,
        ),
        "sd3": lambda: Case(
            "sd3",
            tiny_sd3(),
            (4, 8, 8),
            {"encoder_hidden_states": text, "pooled_projections": pooled},
            kw_net,
        ),
        "flux": lambda: Case(
            "flux",
            tiny_flux(),
            (8, 4, 4),
            {"encoder_hidden_states": text, "pooled_projections": pooled},
            flux_net,
        ),
    }


CASES = _cases()
