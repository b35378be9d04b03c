"""Model-family adapters: which sub-modules each cache touches, named explicitly per family.

One small adapter per diffusers model class. UNet adapters name the down / mid / up blocks;
transformer adapters name the block list, how a block's input and output stream look
(``hidden_states`` alone, or ``(encoder_hidden_states, hidden_states)`` for the joint
MM-DiT blocks of SD3 / Flux) and how to compute the first block's timestep-modulated input
(TeaCache). Nothing is found by guessing attribute names: a model whose class has no adapter
gets an :class:`UnsupportedModelError` listing the supported ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffspeed.errors import UnsupportedModelError


def _arg(args: tuple, kwargs: dict, name: str, pos: int) -> Any:
    """A call argument given by keyword ``name`` or at position ``pos``."""
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else None


@dataclass(frozen=True)
class ModelAdapter:
    """How the caches see one diffusers model class.

    Attributes:
        class_name: the diffusers class (``isinstance`` check, subclasses included).
        family: ``"unet"`` or ``"transformer"``.
        timestep_pos: position of ``timestep`` in the model's forward (for inferred steps).
        condition_modules: dotted names of modules whose output depends only on the
            conditioning (text / class / control embeddings), for condition caching.
        blocks: transformer blocks in execution order (``model -> [block, ...]``).
        joint: blocks take and return ``(encoder_hidden_states, hidden_states)``.
        modulated_input: ``(block, args, kwargs) -> tensor``, the first block's
            timestep-modulated normalised input (TeaCache's indicator).
    """

    class_name: str
    family: str
    timestep_pos: int = 1
    condition_modules: Callable[[nn.Module], list[str]] = lambda m: []
    blocks: Callable[[nn.Module], list[nn.Module]] | None = None
    joint: bool = False
    modulated_input: Callable[[nn.Module, tuple, dict], torch.Tensor] | None = None

    def model_class(self) -> type | None:
        """The diffusers class, or None if this diffusers version lacks it."""
        import diffusers

        return getattr(diffusers, self.class_name, None)

    # --- UNets ------------------------------------------------------------------------------
    def unet_blocks(self, model: nn.Module) -> tuple[list[nn.Module], nn.Module | None, list]:
        """``(down_blocks, mid_block, up_blocks)`` of a UNet."""
        return list(model.down_blocks), model.mid_block, list(model.up_blocks)

    # --- transformer block streams ----------------------------------------------------------
    def stream_in(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, ...]:
        """The residual stream entering a block."""
        hidden = _arg(args, kwargs, "hidden_states", 0)
        if self.joint:
            return (_arg(args, kwargs, "encoder_hidden_states", 1), hidden)
        return (hidden,)

    def stream_out(self, out: Any) -> tuple[torch.Tensor | None, ...]:
        """The residual stream a block returned."""
        return tuple(out) if self.joint else (out,)

    def pack(self, stream: tuple[torch.Tensor | None, ...]) -> Any:
        """A block's return value holding ``stream``."""
        return tuple(stream) if self.joint else stream[0]

    def conditions(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The condition modules present on ``model`` (absent optional ones are skipped)."""
        out = []
        for name in self.condition_modules(model):
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                continue
            if mod is not None:
                out.append((name, mod))
        return out


def _unet2d_conditions(model: nn.Module) -> list[str]:
    return ["class_embedding"] if model.class_embedding is not None else []


def _unet2dcond_conditions(model: nn.Module) -> list[str]:
    names = ["class_embedding", "encoder_hid_proj", "add_embedding"]
    return [n for n in names if getattr(model, n, None) is not None]


def _dit_conditions(model: nn.Module) -> list[str]:
    return [
        f"transformer_blocks.{i}.norm1.emb.class_embedder"
        for i in range(len(model.transformer_blocks))
    ]


def _dit_modulated(block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    # AdaLayerNormZero(x, timestep, class_labels) -> (norm(x) * (1 + scale) + shift, ...)
    x = _arg(args, kwargs, "hidden_states", 0)
    t = _arg(args, kwargs, "timestep", 4)
    y = _arg(args, kwargs, "class_labels", 6)
    return block.norm1(x, t, y, hidden_dtype=x.dtype)[0]


def _pixart_modulated(block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    # ada_norm_single: (scale_shift_table + t.reshape(B, 6, D)) -> shift_msa, scale_msa
    x = _arg(args, kwargs, "hidden_states", 0)
    t = _arg(args, kwargs, "timestep", 4)
    shift, scale = (block.scale_shift_table[None] + t.reshape(x.shape[0], 6, -1)).chunk(6, dim=1)[
        :2
    ]
    return block.norm1(x) * (1 + scale) + shift


def _mmdit_modulated(block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    # AdaLayerNormZero(x, emb=temb)[0] of the first joint block (SD3 / Flux)
    x = _arg(args, kwargs, "hidden_states", 0)
    return block.norm1(x, emb=kwargs["temb"])[0]


def _flux_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.transformer_blocks) + list(model.single_transformer_blocks)


ADAPTERS: dict[str, ModelAdapter] = {
    a.class_name: a
    for a in (
        ModelAdapter("UNet2DModel", "unet", condition_modules=_unet2d_conditions),
        ModelAdapter("UNet2DConditionModel", "unet", condition_modules=_unet2dcond_conditions),
        ModelAdapter(
            "DiTTransformer2DModel",
            "transformer",
            condition_modules=_dit_conditions,
            blocks=lambda m: list(m.transformer_blocks),
            modulated_input=_dit_modulated,
        ),
        ModelAdapter(
            "PixArtTransformer2DModel",
            "transformer",
            timestep_pos=2,
            condition_modules=lambda m: ["caption_projection"],
            blocks=lambda m: list(m.transformer_blocks),
            modulated_input=_pixart_modulated,
        ),
        ModelAdapter(
            "SD3Transformer2DModel",
            "transformer",
            timestep_pos=3,
            condition_modules=lambda m: ["context_embedder"],
            blocks=lambda m: list(m.transformer_blocks),
            joint=True,
            modulated_input=_mmdit_modulated,
        ),
        ModelAdapter(
            "FluxTransformer2DModel",
            "transformer",
            timestep_pos=3,
            condition_modules=lambda m: ["context_embedder"],
            blocks=_flux_blocks,
            joint=True,
            modulated_input=_mmdit_modulated,
        ),
    )
}


def find_adapter(model: nn.Module) -> ModelAdapter | None:
    """The adapter of ``model``'s class (exact class first, then subclasses), or None."""
    for exact in (True, False):
        for a in ADAPTERS.values():
            cls = a.model_class()
            if cls is None:
                continue
            if (type(model) is cls) if exact else isinstance(model, cls):
                return a
    return None


def supported_models(config: Any) -> list[str]:
    """Class names of the models ``config``'s method supports."""
    return [a.class_name for a in ADAPTERS.values() if a.family in config.families]


def adapter_for(model: nn.Module, config: Any) -> ModelAdapter:
    """The adapter for ``model`` if ``config``'s method supports it, else a clear error."""
    a = find_adapter(model)
    if a is None or a.family not in config.families:
        raise UnsupportedModelError(
            f"cache method {config.method!r} does not support {type(model).__name__}; it "
            f"supports: {', '.join(supported_models(config))} (or a diffspeed denoiser wrapping "
            "one of them)"
        )
    return a
