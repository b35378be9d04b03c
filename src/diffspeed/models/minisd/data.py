"""mini-sd's data: the 8x8 digits at 32x32 in three stroke styles, with captions.

Images are the 1797 scikit-learn digits, upsampled by a fixed bicubic interpolation (x4) and
clipped to [-1, 1], as 3-channel grey (``AutoencoderKL``'s usual RGB input). Styles are made by
grey-scale morphology at 32x32: ``"thin"`` erodes the strokes with a 3x3 min filter, ``"thick"``
dilates them with a 3x3 max filter, ``"regular"`` leaves them. Captions name the digit (as a word
or a numeral) and, for a styled image, its style, from a few templates ("a handwritten seven",
"the digit 7, thick strokes", "a thin 3"). Scoring pools images back to 8x8 (a fixed 4x4
average), where the digits classifier and FDD apply.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from diffspeed.errors import unknown_name

#: Image size ``(C, H, W)`` of mini-sd.
IMAGE_SHAPE = (3, 32, 32)
#: Stroke styles; "regular" images carry no style word in their captions.
STYLES = ("regular", "thin", "thick")
#: Digit names, index = digit.
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Caption templates without a style: ``{d}`` is a word or numeral.
PLAIN_TEMPLATES = ("a handwritten {d}", "the digit {d}", "a {d}", "an image of the digit {d}")
#: Caption templates with a style ``{s}`` ("thin" / "thick").
STYLE_TEMPLATES = (
    "a {s} {d}",
    "a {s} handwritten {d}",
    "the digit {d}, {s} strokes",
    "a {d} with {s} strokes",
)


def upsample(x8: torch.Tensor) -> torch.Tensor:
    """``[N, 1, 8, 8]`` digits in [-1, 1] -> ``[N, 3, 32, 32]`` (bicubic x4, grey as RGB)."""
    x = F.interpolate(x8, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    return x.expand(-1, 3, -1, -1).contiguous()


def pool_to_8x8(x: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, 32, 32]`` -> ``[N, 1, 8, 8]`` grey (channel mean, 4x4 average pooling):
    the fixed map under which mini-sd is scored with the digits classifier and FDD."""
    return F.avg_pool2d(x.mean(dim=1, keepdim=True), 4)


def stylise(x: torch.Tensor, style: str) -> torch.Tensor:
    """Apply a stroke style to 32x32 images in [-1, 1] (strokes bright on a dark background)."""
    if style == "regular":
        return x
    if style == "thick":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    if style == "thin":
        return -F.max_pool2d(-x, 3, stride=1, padding=1)
    raise unknown_name("mini-sd style", style, STYLES)


def stroke_mass(x: torch.Tensor) -> torch.Tensor:
    """Per image, the mean brightness in [0, 1]: the style statistic (thick > regular > thin)."""
    return ((x.mean(dim=1) + 1) / 2).flatten(1).mean(dim=1)


def caption(digit: int, style: str, template: int, numeral: bool) -> str:
    """One caption: template ``template`` (index, wrapped), digit as numeral or word."""
    d = str(digit) if numeral else WORDS[digit]
    if style == "regular":
        return PLAIN_TEMPLATES[template % len(PLAIN_TEMPLATES)].format(d=d)
    return STYLE_TEMPLATES[template % len(STYLE_TEMPLATES)].format(d=d, s=style)


def all_captions() -> list[str]:
    """Every caption the data can carry (the tokenizer's corpus)."""
    out = []
    for digit in range(10):
        for style in STYLES:
            n = len(PLAIN_TEMPLATES if style == "regular" else STYLE_TEMPLATES)
            for t in range(n):
                for numeral in (False, True):
                    out.append(caption(digit, style, t, numeral))
    return out


@lru_cache(maxsize=1)
def dataset() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All digits in all styles: images ``[3N, 3, 32, 32]``, digit labels ``[3N]`` and style
    indices ``[3N]`` (into :data:`STYLES`)."""
    from diffspeed.models.digits import load_digits

    x8, y = load_digits("all")
    x = upsample(x8)
    images, labels, styles = [], [], []
    for k, style in enumerate(STYLES):
        images.append(stylise(x, style))
        labels.append(y)
        styles.append(torch.full_like(y, k))
    return torch.cat(images), torch.cat(labels), torch.cat(styles)


def random_captions(labels: torch.Tensor, styles: torch.Tensor, gen: torch.Generator) -> list[str]:
    """A caption per image, template and numeral-vs-word drawn from ``gen``."""
    t = torch.randint(0, 4, (len(labels),), generator=gen).tolist()
    numeral = (torch.rand(len(labels), generator=gen) < 0.5).tolist()
    return [
        caption(int(d), STYLES[int(s)], ti, nu)
        for d, s, ti, nu in zip(labels.tolist(), styles.tolist(), t, numeral, strict=True)
    ]


def translate(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images moved ``dx`` pixels right and ``dy`` down (background -1 fills; nothing wraps)."""
    m = max(abs(dx), abs(dy))
    if m == 0:
        return x
    padded = F.pad(x, (m,) * 4, value=-1.0)
    h, w = x.shape[-2:]
    return padded[..., m - dy : m - dy + h, m - dx : m - dx + w]


def shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels per image (background fills)."""
    n = x.shape[0]
    dx = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen).tolist()
    dy = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen).tolist()
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    h, w = x.shape[-2:]
    rows = [
        padded[i, :, max_shift + b : max_shift + b + h, max_shift + a : max_shift + a + w]
        for i, (a, b) in enumerate(zip(dx, dy, strict=True))
    ]
    return torch.stack(rows)
