"""Adapters: turn eps-, v- and x0-predicting networks (discrete VP, continuous VP, VE, EDM)
into the one denoiser contract. Each adapter's whole job is the scalings of the EDM table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffspeed.core.contract import CondSpec
from diffspeed.core.denoiser import Denoiser, network_output
from diffspeed.errors import ConfigError, unknown_name

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _check_prediction(prediction: str) -> str:
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise unknown_name("prediction type", prediction, PREDICTIONS)
    return prediction


def _vp_scalings(
    prediction: str, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in)`` of a VP model seen in VE form (alpha = 1/sqrt(1+sigma^2))."""
    c_in = 1.0 / torch.sqrt(1.0 + sigma**2)
    if prediction == "epsilon":  # x0 = x - sigma * eps
        return torch.ones_like(sigma), -sigma, c_in
    if prediction == "v_prediction":  # x0 = alpha * x_t - s * v = x / (1 + s^2) - s c_in v
        return 1.0 / (1.0 + sigma**2), -sigma * c_in, c_in
    return torch.zeros_like(sigma), torch.ones_like(sigma), c_in  # sample: x0 directly


class DiscreteVPDenoiser(Denoiser):
    """A discrete-time VP model ``net(x_t, t, **cond)`` (DDPM / Stable Diffusion / diffusers).

    Sigmas between the discrete steps map to a fractional ``t`` by linear interpolation in
    log-sigma over ``sigma_t = sqrt((1 - abar_t) / abar_t)``, so any sigma in range works.
    """

    variance_preserving = True

    def __init__(
        self,
        net: Callable[..., Any],
        alphas_cumprod: torch.Tensor | Sequence[float],
        prediction: str = "epsilon",
        **kwargs: Any,
    ) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not ((ac > 0) & (ac < 1)).all():
            raise ConfigError("alphas_cumprod must hold >= 2 values strictly inside (0, 1)")
        if not (ac[1:] < ac[:-1]).all():
            raise ConfigError("alphas_cumprod must be strictly decreasing in t")
        sig = torch.sqrt((1 - ac) / ac)
        super().__init__(net, float(sig[0]), float(sig[-1]), **kwargs)
        self.prediction = _check_prediction(prediction)
        self.register_buffer("alphas_cumprod", ac, persistent=False)
        self.register_buffer("log_sigmas", sig.log(), persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        """Number of discrete training timesteps (1000 for DDPM / Stable Diffusion)."""
        return self.log_sigmas.numel()

    @property
    def sigmas(self) -> torch.Tensor:
        """The discrete sigmas ``sigma_t`` for ``t = 0 .. T-1`` (float64, increasing)."""
        return self.log_sigmas.exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of each sigma (log-sigma interpolation; float64)."""
        ls = self.log_sigmas.to(sigma.device)
        logs = sigma.double().log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, logs).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = (logs - ls[lo]) / (ls[hi] - ls[lo])
        return lo.double() + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma of a (possibly fractional) timestep, the inverse of :meth:`sigma_to_t`."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_train_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = t - lo
        ls = self.log_sigmas.to(t.device)
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    def scalings(self, sigma: torch.Tensor):  # noqa: D102 - see Denoiser.scalings
        c_skip, c_out, c_in = _vp_scalings(self.prediction, sigma)
        return c_skip, c_out, c_in, self.sigma_to_t(sigma)


class ContinuousVPDenoiser(Denoiser):
    """A continuous-time VP model ``net(x_t, t, **cond)`` with ``x_t = alpha(t) x0 + s(t) eps``.

    ``alpha`` and ``sigma`` are the user's functions of float64 ``t`` in ``[t_min, t_max]``; the
    VE sigma ``s/alpha`` must increase with ``t``. Sigma -> t is inverted by bisection in
    float64 (60 halvings, exact to machine precision).
    """

    variance_preserving = True

    def __init__(
        self,
        net: Callable[..., Any],
        alpha: Callable[[torch.Tensor], torch.Tensor],
        sigma: Callable[[torch.Tensor], torch.Tensor],
        *,
        t_min: float = 1e-3,
        t_max: float = 1.0,
        prediction: str = "epsilon",
        **kwargs: Any,
    ) -> None:
        self.alpha_fn, self.sigma_fn = alpha, sigma
        self.t_min, self.t_max = float(t_min), float(t_max)
        ends = self.ve_sigma(torch.tensor([t_min, t_max], dtype=torch.float64))
        if not ends[1] > ends[0]:
            raise ConfigError("sigma(t)/alpha(t) must increase from t_min to t_max")
        super().__init__(net, float(ends[0]), float(ends[1]), **kwargs)
        self.prediction = _check_prediction(prediction)

    def ve_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """VE noise level ``sigma(t) / alpha(t)``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.as_tensor(self.sigma_fn(t), dtype=torch.float64) / torch.as_tensor(
            self.alpha_fn(t), dtype=torch.float64
        )

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`ve_sigma` by bisection (float64)."""
        lo = torch.full_like(sigma, self.t_min, dtype=torch.float64)
        hi = torch.full_like(sigma, self.t_max, dtype=torch.float64)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.ve_sigma(mid) > sigma
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return (lo + hi) / 2

    def scalings(self, sigma: torch.Tensor):  # noqa: D102
        c_skip, c_out, c_in = _vp_scalings(self.prediction, sigma)
        return c_skip, c_out, c_in, self.sigma_to_t(sigma)


class VEDenoiser(Denoiser):
    """A variance-exploding model ``net(x, sigma, **cond)`` predicting eps or x0 (NCSN style).

    ``c_noise`` is sigma itself (set ``noise_input="log"`` for ``log(sigma)/4``, EDM style).
    """

    def __init__(
        self,
        net: Callable[..., Any],
        sigma_min: float,
        sigma_max: float,
        *,
        prediction: str = "epsilon",
        noise_input: str = "sigma",
        **kwargs: Any,
    ) -> None:
        super().__init__(net, sigma_min, sigma_max, **kwargs)
        if prediction not in ("epsilon", "sample"):
            raise unknown_name("VE prediction type", prediction, ("epsilon", "sample"))
        if noise_input not in ("sigma", "log"):
            raise unknown_name("noise_input", noise_input, ("sigma", "log"))
        self.prediction, self.noise_input = prediction, noise_input

    def scalings(self, sigma: torch.Tensor):  # noqa: D102
        one = torch.ones_like(sigma)
        c_noise = sigma if self.noise_input == "sigma" else sigma.log() / 4
        if self.prediction == "epsilon":
            return one, -sigma, one, c_noise
        return torch.zeros_like(sigma), one, one, c_noise


class EDMDenoiser(Denoiser):
    """An EDM-preconditioned network ``F(c_in x, c_noise)`` (Karras et al. 2022, Table 1)."""

    def __init__(
        self,
        net: Callable[..., Any],
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        *,
        sigma_data: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, sigma_min, sigma_max, **kwargs)
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: torch.Tensor):  # noqa: D102
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        c_in = 1.0 / torch.sqrt(sigma**2 + sd2)
        return c_skip, c_out, c_in, sigma.log() / 4


def wrap(
    fn: Callable[..., Any],
    prediction: str = "epsilon",
    alphas_cumprod: torch.Tensor | Sequence[float] | None = None,
    *,
    check_finite: bool = True,
) -> DiscreteVPDenoiser:
    """Wrap a discrete-time VP model ``fn(x_t, t, **cond)`` as a denoiser.

    Args:
        fn: the network; returns a tensor, a diffusers output (``.sample``) or a tuple.
        prediction: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        alphas_cumprod: ``[T]`` cumulative products of ``1 - beta_t`` (e.g. a diffusers
            scheduler's ``alphas_cumprod``).
    """
    if not callable(fn):
        raise ConfigError(
            f"wrap() needs the network (an nn.Module or callable fn(x_t, t, **cond)), got "
            f"{type(fn).__name__}; load the model first, e.g. UNet2DModel.from_pretrained(...)"
        )
    _check_prediction(prediction)
    if alphas_cumprod is None:
        raise ConfigError(
            "wrap() needs alphas_cumprod (e.g. scheduler.alphas_cumprod); "
            "use diffspeed.from_diffusers(unet, scheduler) to read it from a diffusers scheduler"
        )
    return DiscreteVPDenoiser(fn, alphas_cumprod, prediction, check_finite=check_finite)


#: diffusers' argument names for the conditioning its models take.
CLASS_LABELS = "class_labels"
TEXT_EMBEDDINGS = "encoder_hidden_states"
ADDED_COND = "added_cond_kwargs"

#: ``learned_sigma`` values of :func:`from_diffusers`.
LEARNED_SIGMA = ("split",)


class SplitLearnedSigma(nn.Module):
    """A learned-sigma network seen without its variance output.

    Models trained with a learned variance (improved DDPM, the official DiT checkpoints)
    return ``2 C`` channels for a ``C``-channel input: the prediction, then the variance
    interpolation. A deterministic denoiser needs only the prediction, the first half.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        """The first ``C`` output channels of ``net(x, t, **cond)``."""
        out = network_output(self.net(x, t, **cond))
        return out[:, : out.shape[1] // 2]


def _config(model: nn.Module) -> dict[str, Any]:
    return dict(getattr(model, "config", None) or {})


def _sample_shape(cfg: Mapping[str, Any]) -> tuple[int, ...] | None:
    size, channels = cfg.get("sample_size"), cfg.get("in_channels")
    if channels is None or size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return (int(channels), *(int(v) for v in hw))


def _class_examples(num_classes: int, uncond: Mapping[str, Any]):
    """Example class labels cycling through the classes, skipping a scalar null class."""
    null = uncond.get(CLASS_LABELS)
    classes = torch.arange(num_classes)
    if null is not None and torch.as_tensor(null).ndim == 0:
        classes = classes[classes != int(null)]

    def examples(n: int) -> dict[str, torch.Tensor]:
        return {CLASS_LABELS: classes[torch.arange(n) % len(classes)]}

    return examples


def infer_cond_spec(model: nn.Module, uncond: Mapping[str, Any] | None = None) -> CondSpec:
    """The conditioning spec of a diffusers model, read from its config.

    - ``UNet2DModel``: ``class_labels`` when it has class embeddings (``num_class_embeds``
      or ``class_embed_type``), else unconditional; the null class is unknown unless given.
    - ``UNet2DConditionModel``: ``encoder_hidden_states`` (batch dim 0), plus
      ``class_labels`` / ``added_cond_kwargs`` when its config adds them; the uncond (the
      empty prompt's embeddings) is unknown unless given.
    - DiT (``DiTTransformer2DModel``, ``Transformer2DModel`` with ``ada_norm_zero``):
      ``class_labels``, uncond the extra class ``num_embeds_ada_norm`` its label embedding
      learns by label dropout (what ``DiTPipeline`` passes).
    - other models (SD3, Flux, PixArt, ...): keys undeclared (any ``cond`` passes).

    Class-conditional specs come with example conditions cycling through the classes (the
    null class skipped); ``sample_shape`` is ``(in_channels, sample_size, sample_size)``.
    """
    cfg = _config(model)
    name = type(model).__name__
    given = dict(uncond or {})
    keys: tuple[str, ...] | None = None
    default_uncond: dict[str, Any] = {}
    num_classes = 0
    embeds = 0  # label values the network embeds (the null class included)
    if name == "UNet2DModel":
        num_classes = embeds = int(cfg.get("num_class_embeds") or 0)
        has_classes = bool(num_classes or cfg.get("class_embed_type"))
        keys = (CLASS_LABELS,) if has_classes else ()
    elif name == "UNet2DConditionModel":
        num_classes = int(cfg.get("num_class_embeds") or 0)
        keys = (TEXT_EMBEDDINGS,)
        if num_classes or cfg.get("class_embed_type"):
            keys += (CLASS_LABELS,)
        if cfg.get("addition_embed_type"):
            keys += (ADDED_COND,)
    elif cfg.get("norm_type") == "ada_norm_zero" and cfg.get("num_embeds_ada_norm"):
        num_classes = int(cfg["num_embeds_ada_norm"])
        embeds = num_classes + 1
        keys = (CLASS_LABELS,)
        default_uncond = {CLASS_LABELS: torch.tensor(num_classes)}
    if keys is not None:
        unknown = sorted(set(given) - set(keys))
        if unknown:
            raise ConfigError(
                f"uncond names {unknown}, which {name} does not take; its cond keys are "
                f"{list(keys)}"
            )
    merged = {**default_uncond, **given}
    return CondSpec(
        keys=keys,
        uncond=merged if keys is not None else (merged or None),
        batch_dims={k: 0 for k in keys or ()},
        sample_shape=_sample_shape(cfg),
        classes={CLASS_LABELS: embeds} if embeds and CLASS_LABELS in (keys or ()) else {},
        examples=_class_examples(num_classes, merged) if num_classes else None,
    )


def _learned_sigma(model: nn.Module, learned_sigma: str | None) -> bool:
    if learned_sigma is not None:
        if learned_sigma not in LEARNED_SIGMA:
            raise unknown_name("learned_sigma", learned_sigma, LEARNED_SIGMA)
        return True
    cfg = _config(model)
    cin = cfg.get("in_channels")
    cout = cfg.get("out_channels") or cin
    return cin is not None and cout == 2 * cin


def from_diffusers(
    unet: torch.nn.Module,
    scheduler: Any,
    *,
    cond_spec: CondSpec | None = None,
    uncond: Mapping[str, Any] | None = None,
    learned_sigma: str | None = None,
    prediction: str | None = None,
    **kwargs: Any,
) -> DiscreteVPDenoiser:
    """Denoiser for a diffusers UNet/transformer and the scheduler it was trained with.

    Reads ``prediction_type`` and the betas (``alphas_cumprod``) from the scheduler. Any
    ``cond`` passed to the denoiser (``encoder_hidden_states``, ``class_labels``,
    ``added_cond_kwargs``, ...) goes to the model's forward unchanged.

    Args:
        unet: the diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, a transformer).
        scheduler: a discrete-time VP diffusers scheduler built from the model's config.
        cond_spec: the conditioning spec; default: read from the model's config
            (:func:`infer_cond_spec`).
        uncond: the unconditional inputs, e.g. ``{"encoder_hidden_states": empty_prompt}``
            or ``{"class_labels": null_class}`` (merged into the inferred spec).
        learned_sigma: ``"split"`` keeps the first half of the output channels of a
            learned-variance model (``out_channels == 2 * in_channels``, as in the official
            DiT checkpoints); detected from the config when not given.
        prediction: overrides the scheduler's ``prediction_type`` (``"epsilon"``,
            ``"v_prediction"``, ``"sample"``).
    """
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        raise ConfigError(
            f"{type(scheduler).__name__} has no alphas_cumprod; pass a discrete-time VP "
            "diffusers scheduler (DDPM/DDIM/Euler/DPMSolver... built from the model's config)"
        )
    if prediction is None:
        prediction = scheduler.config.get("prediction_type", "epsilon")
    _check_prediction(prediction)
    if not isinstance(unet, torch.nn.Module):
        raise ConfigError(
            f"from_diffusers expects the loaded model (a torch nn.Module), got "
            f"{type(unet).__name__}; load it first, e.g. UNet2DModel.from_pretrained(path, "
            "subfolder='unet', use_safetensors=True)"
        )
    if cond_spec is not None and uncond is not None:
        raise ConfigError("give cond_spec or uncond, not both (a spec carries its own uncond)")
    spec = cond_spec if cond_spec is not None else infer_cond_spec(unet, uncond)
    net = SplitLearnedSigma(unet) if _learned_sigma(unet, learned_sigma) else unet
    den = DiscreteVPDenoiser(net, torch.as_tensor(ac), prediction, **kwargs)
    den.model = unet  # caches and digests reach the diffusers model, not the split
    den.cond_spec = spec
    return den


def vp_continuous(
    fn: Callable[..., Any],
    alpha: Callable[[torch.Tensor], torch.Tensor],
    sigma: Callable[[torch.Tensor], torch.Tensor],
    **kwargs: Any,
) -> ContinuousVPDenoiser:
    """Wrap a continuous-time VP model; see :class:`ContinuousVPDenoiser`."""
    return ContinuousVPDenoiser(fn, alpha, sigma, **kwargs)


def cosine_alpha_sigma(
    s: float = 0.008,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """``alpha(t), sigma(t)`` of the cosine schedule (Nichol & Dhariwal 2021), t in [0, 1]."""

    def alpha(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)

    def sigma(t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((1 - alpha(t) ** 2).clamp_min(0))

    return alpha, sigma
