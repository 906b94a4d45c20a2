"""`jepa.augment`'s views, made for a whole batch at once.

torchvision's v2 transforms take one image at a time; on small images (8x8 digits,
64x64 Tiny-ImageNet) nearly all their time is Python dispatch, e.g. ~20 tensor ops per
image for one hue shift. `BatchViews` reads the recipe from the `v2.Compose` that
`jepa.augment.view_transform` builds, so what a view is stays defined there, and applies
each step to the whole batch with per-image random parameters drawn from the same
distributions as the per-image transforms:

- random resized crop: torchvision's box sampler, vectorised (`crop_boxes`), then a
  crop and bilinear resize per image (the boxes differ in size);
- flip, grey, "apply with probability p": one Bernoulli draw per image;
- colour jitter: per-image factors and per-image random order of the four operations,
  each the formula of torchvision's kernel (`_blend`, `adjust_hue`) with the factor as a
  [B, 1, 1, 1] tensor;
- Gaussian blur: per-image sigma, torchvision's kernel, one grouped convolution.

Any other step in the recipe is an error (the per-image transform remains correct).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv


class BatchViews:
    """Random views of a batch: uint8 [B, 3, h, w] -> normalised float32 [B, 3, S, S].

    `transform` is a `v2.Compose` from `jepa.augment` (`view_transform` or
    `clean_transform`). Randomness comes from torch's global generator, as with the
    per-image transforms, so seeding torch makes the views reproducible.
    """

    def __init__(self, transform: v2.Compose) -> None:
        for step in transform.transforms:
            inner = step.transforms[0] if isinstance(step, v2.RandomApply) else step
            if isinstance(step, v2.RandomApply) and len(step.transforms) != 1:
                raise TypeError("BatchViews supports RandomApply around one transform")
            if not isinstance(inner, _SUPPORTED):
                raise TypeError(f"BatchViews cannot batch {type(inner).__name__}")
        self.steps = list(transform.transforms)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for step in self.steps:
            if isinstance(step, v2.RandomApply):
                chosen = torch.rand(len(x)) < step.p
                if chosen.any():
                    x = x.clone()
                    x[chosen] = _apply(step.transforms[0], x[chosen])
            else:
                x = _apply(step, x)
        return x


def _apply(step, x: torch.Tensor) -> torch.Tensor:
    if isinstance(step, v2.ToDtype):
        return TF.to_dtype(x, step.dtype, scale=step.scale)
    if isinstance(step, v2.Resize):
        return TF.resize(x, step.size, interpolation=step.interpolation, antialias=step.antialias)
    if isinstance(step, v2.Normalize):
        return TF.normalize(x, step.mean, step.std)
    if isinstance(step, v2.RandomResizedCrop):
        return _resized_crops(step, x)
    if isinstance(step, v2.RandomHorizontalFlip):
        chosen = torch.rand(len(x)) < step.p
        return torch.where(chosen[:, None, None, None], x.flip(-1), x)
    if isinstance(step, v2.RandomGrayscale):
        chosen = torch.rand(len(x)) < step.p
        grey = TF.rgb_to_grayscale(x, num_output_channels=x.shape[1])
        return torch.where(chosen[:, None, None, None], grey, x)
    if isinstance(step, v2.ColorJitter):
        return _color_jitter(step, x)
    if isinstance(step, v2.GaussianBlur):
        return _gaussian_blur(step, x)
    raise TypeError(f"BatchViews cannot batch {type(step).__name__}")


def _resized_crops(step: v2.RandomResizedCrop, x: torch.Tensor) -> torch.Tensor:
    """Each image its own crop box, resized to `step.size` (bilinear, as the transform)."""
    if step.interpolation not in ("bilinear", v2.InterpolationMode.BILINEAR):
        raise TypeError("BatchViews batches bilinear RandomResizedCrop only")
    boxes = torch.stack(crop_boxes(len(x), *x.shape[-2:], step.scale, step.ratio), dim=1)
    out = [
        F.interpolate(
            image[None, :, top : top + h, left : left + w],
            size=tuple(step.size),
            mode="bilinear",
            align_corners=False,
            antialias=bool(step.antialias),
        )
        for image, (top, left, h, w) in zip(x, boxes.tolist(), strict=True)
    ]
    return torch.cat(out)


def crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tuple[torch.Tensor, ...]:
    """`v2.RandomResizedCrop`'s sampler for n images at once: (top, left, h, w), each [n].

    Per image: up to 10 draws of an area fraction in `scale` and a log-uniform aspect
    ratio in `ratio`; the first box that fits is placed uniformly at random; when none
    fits, the central crop clipped to `ratio`.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    target = area * torch.empty(n, attempts).uniform_(scale[0], scale[1])
    aspect = torch.exp(torch.empty(n, attempts).uniform_(float(log_ratio[0]), float(log_ratio[1])))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # first attempt that fits (0 if none)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top = (torch.rand(n) * (height - h + 1)).floor().long()
    left = (torch.rand(n) * (width - w + 1)).floor().long()
    # The fallback when no attempt fits: the central crop with the nearest allowed ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    none = ~fits.any(dim=1)
    w, h = torch.where(none, fw, w), torch.where(none, fh, h)
    top = torch.where(none, (height - fh) // 2, top)
    left = torch.where(none, (width - fw) // 2, left)
    return top, left, h, w


def _uniform(bounds: tuple[float, float] | None, n: int) -> torch.Tensor | None:
    if bounds is None:
        return None
    return torch.empty(n).uniform_(bounds[0], bounds[1])[:, None, None, None]


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's `_blend` for float images with a per-image ratio [B, 1, 1, 1]."""
    return (a * ratio + b * (1.0 - ratio)).clamp_(0.0, 1.0)


def _color_jitter(step: v2.ColorJitter, x: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in a random order per image (float input)."""
    n = len(x)
    factors = [
        _uniform(step.brightness, n),
        _uniform(step.contrast, n),
        _uniform(step.saturation, n),
        _uniform(step.hue, n),
    ]
    order = torch.rand(n, 4).argsort(dim=1)  # a uniform random permutation per image
    x = x.clone()
    for position in range(4):
        for op, factor in enumerate(factors):
            chosen = order[:, position] == op
            if factor is not None and chosen.any():
                x[chosen] = _JITTER_OPS[op](x[chosen], factor[chosen])
    return x


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f).clamp_(0.0, 1.0)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = TF.rgb_to_grayscale(x, num_output_channels=1).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, TF.rgb_to_grayscale(x, num_output_channels=1), f)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(x).unbind(dim=-3)
    h = (h + f[:, 0]).remainder_(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _gaussian_blur(step: v2.GaussianBlur, x: torch.Tensor) -> torch.Tensor:
    """torchvision's Gaussian kernel with one sigma per image, as one grouped convolution."""
    n, c, h, w = x.shape
    kx, ky = step.kernel_size
    sigma = torch.empty(n).uniform_(step.sigma[0], step.sigma[1])[:, None]  # [B, 1]
    kernel_x = _kernel1d(kx, sigma)  # [B, kx]
    kernel_y = _kernel1d(ky, sigma)  # [B, ky]
    kernel = kernel_y[:, :, None] * kernel_x[:, None, :]  # [B, ky, kx]
    weight = kernel.repeat_interleave(c, dim=0)[:, None]  # [B * C, 1, ky, kx]
    padded = F.pad(x.reshape(1, n * c, h, w), [kx // 2, kx // 2, ky // 2, ky // 2], "reflect")
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def _kernel1d(size: int, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's `_get_gaussian_kernel1d` for sigma [B, 1] -> [B, size]."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=size)
    return torch.softmax(x.div(sigma).pow(2).neg(), dim=1)


_SUPPORTED = (
    v2.ToDtype,
    v2.Resize,
    v2.Normalize,
    v2.RandomResizedCrop,
    v2.RandomHorizontalFlip,
    v2.RandomGrayscale,
    v2.ColorJitter,
    v2.GaussianBlur,
)
