"""Batch augmentations on the training device: SimCLR views, the light supervised crop, eval input.

Every function takes a whole batch (CPU or CUDA tensor) and draws INDEPENDENT random parameters per
image. torchvision's transforms draw one set of parameters per call, so applied to a batch every
image would get the same crop and the same colour jitter; a per-image Python loop gets this right
but is slow (bench/augment_speed.py measures all three options).

How it is vectorised:
    - random resized crop + horizontal flip: one affine matrix per image (flip = negative x scale),
      one batched ``F.affine_grid`` + ``F.grid_sample`` call, which also resizes to ``out_size``;
    - colour jitter: brightness, contrast, saturation and hue with per-image factors broadcast as
      (B, 1, 1, 1) tensors; images not selected for jitter get identity factors, so no gather/scatter;
    - hue: a vectorised RGB -> HSV hue -> RGB round trip (not a rotation in YIQ space): it is the
      operation torchvision's and PIL's ``ColorJitter`` perform, which the paper's recipe used, and it
      preserves value and saturation exactly. The inverse uses the closed form
      c_n = V - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B,
      which needs no per-sector branching.

Layouts: uint8 input may be NHWC ``(B, S, S, 3)`` (the image cache layout) or NCHW ``(B, 3, S, S)``
with values 0..255; float input is NCHW or NHWC with values in [0, 1]. A tensor whose dim 1 has size 3
is read as NCHW. Output is always float32 NCHW ``(B, 3, out, out)``, normalised with the caller's
per-channel mean/std, and in channels_last memory format on CUDA (faster convolutions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.special import betaincinv
from torch import Tensor

from engine.config import AugmentConfig

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision/PIL
CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop; the first valid attempt wins
BLUR_P = 0.5  # SimCLR applies the gaussian blur to half of the views


# ----------------------------------------------------------------------------- shared helpers


@dataclass(frozen=True)
class _Sampler:
    """Uniform draws from one generator (or the default RNG of `device`), delivered on `device`."""

    generator: torch.Generator | None
    device: torch.device

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        if self.generator is None:
            u = torch.rand(shape, device=self.device)
        else:
            u = torch.rand(shape, generator=self.generator, device=self.generator.device)
            u = u.to(self.device, non_blocking=True)
        return low + (high - low) * u

    def bernoulli(self, n: int, p: float) -> Tensor:
        return self.uniform(n) < p

    def permutation(self, n: int) -> list[int]:
        # Drawn on the CPU: reading a CUDA draw back to the host would stall the GPU queue every batch.
        on_cpu = self.generator is not None and self.generator.device.type == "cpu"
        return torch.randperm(n, generator=self.generator if on_cpu else None).tolist()


def _as_float_nchw(x: Tensor) -> Tensor:
    """uint8 (0..255) or float ([0, 1]) images, NCHW or NHWC -> float32 NCHW in [0, 1]."""
    if x.dim() != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"images must have shape (B, 3, H, W) or (B, H, W, 3), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("images must hold at least one image, got an empty batch")
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 or floating point, got dtype {x.dtype}")
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _channel_stats(values: Sequence[float], device: torch.device) -> Tensor:
    return torch.tensor([float(v) for v in values], device=device).view(1, 3, 1, 1)


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 values (R, G, B), got {len(mean)} and {len(std)}")
    if min(float(s) for s in std) <= 0:
        raise ValueError(f"std must be > 0 for every channel, got {tuple(std)}")


def _finish(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalise per channel; channels_last on CUDA (tensor-core convolutions prefer it)."""
    x = (x - _channel_stats(mean, x.device)) / _channel_stats(std, x.device)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _gray(x: Tensor) -> Tensor:
    """Luma of RGB images. Shape: (B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _resize(x: Tensor, out_size: int) -> Tensor:
    if x.shape[-2:] == (out_size, out_size):
        return x
    return F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)


# ----------------------------------------------------------------------------- geometry


def _sample_crops(n: int, height: int, width: int, cfg: AugmentConfig, sampler: _Sampler) -> Tensor:
    """Random resized crop boxes (left, top, width, height) in input pixels, per image. Shape: (n, 4).

    torchvision's rule, vectorised: CROP_ATTEMPTS draws of area fraction and log-uniform aspect ratio,
    the first that fits wins; if none fits, a centred crop with the ratio clamped to the range.
    Boxes are continuous (sub-pixel), which bilinear sampling handles anyway.
    """
    (s_lo, s_hi), (r_lo, r_hi) = cfg.crop_scale, cfg.crop_ratio
    area = height * width * sampler.uniform(n, CROP_ATTEMPTS, low=s_lo, high=s_hi)
    ratio = torch.exp(sampler.uniform(n, CROP_ATTEMPTS, low=math.log(r_lo), high=math.log(r_hi)))
    w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first fitting attempt
    w, h, any_fit = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1), fits.any(dim=1)
    fb_w, fb_h = _fallback_crop(height, width, r_lo, r_hi)
    w = torch.where(any_fit, w, torch.full_like(w, fb_w))
    h = torch.where(any_fit, h, torch.full_like(h, fb_h))
    u_x, u_y = sampler.uniform(n), sampler.uniform(n)
    left = torch.where(any_fit, u_x, torch.full_like(u_x, 0.5)) * (width - w)
    top = torch.where(any_fit, u_y, torch.full_like(u_y, 0.5)) * (height - h)
    return torch.stack([left, top, w, h], dim=1)


def _fallback_crop(height: int, width: int, r_lo: float, r_hi: float) -> tuple[float, float]:
    """The whole image, cut to the nearest allowed aspect ratio (torchvision's fallback)."""
    in_ratio = width / height
    if in_ratio < r_lo:
        return float(width), float(round(width / r_lo))
    if in_ratio > r_hi:
        return float(round(height * r_hi)), float(height)
    return float(width), float(height)


def _crop_theta(crops: Tensor, flip: Tensor, height: int, width: int) -> Tensor:
    """Affine matrices mapping output coordinates in [-1, 1] to each crop box (align_corners=False).

    Shape: (B, 4), (B,) -> (B, 2, 3). A flip is a negative x scale, so it costs nothing extra.
    """
    left, top, w, h = crops.unbind(dim=1)
    sx = (w / width) * torch.where(flip, -1.0, 1.0)
    sy = h / height
    cx = (2 * left + w) / width - 1
    cy = (2 * top + h) / height - 1
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, cx], dim=1), torch.stack([zero, sy, cy], dim=1)], dim=1)


def _resized_crop(x: Tensor, crops: Tensor, flip: Tensor, out_size: int) -> Tensor:
    """Crop, flip and resize every image in one grid_sample call. Shape: (B, 3, H, W) -> (B, 3, out, out)."""
    theta = _crop_theta(crops, flip, x.shape[-2], x.shape[-1])
    grid = F.affine_grid(theta, [x.shape[0], 3, out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- colour


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1] (PIL's ImageEnhance semantics)."""
    return (factor * x + (1 - factor) * other).clamp_(0.0, 1.0)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of each image by `shift` turns (in [-0.5, 0.5]).

    Shape: (B, 3, H, W), (B, 1, 1, 1) -> (B, 3, H, W). The hue sector is selected with 0/1 masks
    and arithmetic instead of nested `torch.where` and argmax: 2-3x faster on CPU.
    """
    r, g, b = x.unbind(dim=1)
    v = x.amax(dim=1)
    chroma = v - x.amin(dim=1)
    inv_chroma = 1.0 / chroma.clamp_min(1e-12)  # grey pixels: chroma 0, every numerator 0, hue 0
    red_max = (r == v).float()
    green_max = (g == v).float() * (1 - red_max)
    blue_max = 1 - red_max - green_max
    h6 = (red_max * (g - b) + green_max * (b - r) + blue_max * (r - g)) * inv_chroma + 2 * green_max + 4 * blue_max
    h6 = h6.unsqueeze(1) + 6 * shift  # hue in sixths of a turn; the remainder below wraps it
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + h6, 6)
    return v.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0.0, 1.0)


def _color_jitter(x: Tensor, factors: Tensor, order: list[int]) -> Tensor:
    """Brightness, contrast, saturation, hue with per-image factors, in the given op order.

    Shape: (B, 3, H, W), factors (B, 4) (identity = 1, 1, 1, 0) -> (B, 3, H, W).
    """
    f = factors.view(-1, 4, 1, 1).unbind(dim=1)  # four (B, 1, 1) tensors
    for op in order:
        factor = f[op].unsqueeze(1)  # (B, 1, 1, 1)
        if op == 0:
            x = (x * factor).clamp_(0.0, 1.0)
        elif op == 1:
            x = _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)
        elif op == 2:
            x = _blend(x, _gray(x), factor)
        else:
            x = _shift_hue(x, factor)
    return x


def _gaussian_blur(x: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """Separable gaussian blur with a per-image sigma (0 = unchanged), as one grouped convolution.

    Shape: (B, 3, H, W), (B,) -> (B, 3, H, W).
    """
    n, c, height, width = x.shape
    half = max(1, min(math.ceil(3 * max_sigma), height - 1, width - 1))
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*3, k)
    y = F.pad(x.reshape(1, n * c, height, width), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, height, width)


# ----------------------------------------------------------------------------- public API


class BatchAugment:
    """SimCLR view transform applied to whole batches with per-image random parameters.

    Pipeline (SimCLR / the paper's "moco" recipe): random resized crop -> horizontal flip ->
    colour jitter with probability jitter_p (one random op order per call, as torchvision draws one
    order per call) -> grayscale with probability gray_p -> optional gaussian blur (probability 0.5,
    sigma in blur_sigma pixels) -> per-channel normalisation.

    Args:
        cfg: crop scale/ratio, probabilities and jitter strengths.
        out_size: side of the output views in pixels.
        mean, std: per-channel normalisation of the [0, 1] output (3 values each).
    """

    def __init__(self, cfg: AugmentConfig, *, out_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        _check_config(cfg)
        if out_size < 1:
            raise ValueError(f"out_size must be >= 1, got {out_size}")
        _check_mean_std(mean, std)
        self.cfg, self.out_size = cfg, out_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(
        self, x: Tensor, generator: torch.Generator | None = None, *, return_params: bool = False,
        within: tuple[int, int] | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Augment a batch.

        Args:
            x: uint8 (0..255) or float ([0, 1]) images, (B, 3, H, W) or (B, H, W, 3).
            generator: makes the draws reproducible; a CPU generator also works for CUDA images.
            return_params: also return the drawn parameters.
            within: (start, total): x is images start .. start + B of a batch of `total` images split across
                processes; the parameters are drawn for the whole batch and x gets its part's, so every
                image is augmented as it would be in one process.

        Returns:
            Views (B, 3, out_size, out_size) float32, and with return_params a dict of per-image
            parameters: "crop" (B, 4) as (left, top, width, height) in input pixels, "flip" (B,) bool,
            "jitter" (B, 4) drawn (brightness, contrast, saturation, hue) factors, "jitter_applied" (B,)
            bool, "gray" (B,) bool, "blur_sigma" (B,) (0 = not blurred), "jitter_order" (4,).
        """
        img = _as_float_nchw(x)
        n, start = (img.shape[0], 0) if within is None else (within[1], within[0])
        params = self.sample_params(n, img.shape[-2], img.shape[-1], generator, img.device)
        if within is not None:  # this part's draws; the jitter order is one for the whole batch
            params = {k: v if k == "jitter_order" else v[start:start + img.shape[0]] for k, v in params.items()}
        out = _resized_crop(img, params["crop"], params["flip"], self.out_size)
        identity = torch.tensor([1.0, 1.0, 1.0, 0.0], device=img.device)
        factors = torch.where(params["jitter_applied"][:, None], params["jitter"], identity)
        out = _color_jitter(out, factors, params["jitter_order"].tolist())
        out = torch.where(params["gray"].view(-1, 1, 1, 1), _gray(out).expand_as(out), out)
        if self.cfg.blur:
            out = _gaussian_blur(out, params["blur_sigma"], self.cfg.blur_sigma[1])
        out = _finish(out, self.mean, self.std)
        return (out, params) if return_params else out

    def sample_params(
        self, n: int, height: int, width: int, generator: torch.Generator | None, device: torch.device
    ) -> dict[str, Tensor]:
        """Draw every per-image parameter of one call (see `__call__`), in a fixed order."""
        cfg, sampler = self.cfg, _Sampler(generator, device)
        crop = _sample_crops(n, height, width, cfg, sampler)
        flip = sampler.bernoulli(n, cfg.flip_p)
        b, c, s, h = cfg.jitter
        jitter = torch.stack(
            [
                sampler.uniform(n, low=max(0.0, 1 - b), high=1 + b),
                sampler.uniform(n, low=max(0.0, 1 - c), high=1 + c),
                sampler.uniform(n, low=max(0.0, 1 - s), high=1 + s),
                sampler.uniform(n, low=-h, high=h),
            ],
            dim=1,
        )
        jitter_applied = sampler.bernoulli(n, cfg.jitter_p)
        gray = sampler.bernoulli(n, cfg.gray_p)
        sigma = sampler.uniform(n, low=cfg.blur_sigma[0], high=cfg.blur_sigma[1])
        blurred = sampler.bernoulli(n, BLUR_P if cfg.blur else 0.0)
        order = torch.tensor(sampler.permutation(4))
        return {
            "crop": crop,
            "flip": flip,
            "jitter": jitter,
            "jitter_applied": jitter_applied,
            "gray": gray,
            "blur_sigma": torch.where(blurred, sigma, torch.zeros_like(sigma)),
            "jitter_order": order,
        }


def _check_config(cfg: AugmentConfig) -> None:
    (s_lo, s_hi), (r_lo, r_hi), probs = cfg.crop_scale, cfg.crop_ratio, (cfg.flip_p, cfg.jitter_p, cfg.gray_p)
    checks = [
        (
            0.0 <= s_lo <= s_hi <= 1.0 and s_hi > 0,
            f"crop_scale must satisfy 0 <= lo <= hi <= 1, hi > 0, got {cfg.crop_scale}",
        ),
        (0.0 < r_lo <= r_hi, f"crop_ratio must satisfy 0 < lo <= hi, got {cfg.crop_ratio}"),
        (all(0.0 <= p <= 1.0 for p in probs), f"flip_p, jitter_p and gray_p must be in [0, 1], got {probs}"),
        (min(cfg.jitter[:3]) >= 0.0, f"brightness, contrast and saturation jitter must be >= 0, got {cfg.jitter}"),
        (0.0 <= cfg.jitter[3] <= 0.5, f"hue jitter must be in [0, 0.5], got {cfg.jitter[3]}"),
        (0.0 < cfg.blur_sigma[0] <= cfg.blur_sigma[1], f"blur_sigma must satisfy 0 < lo <= hi, got {cfg.blur_sigma}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def two_views(aug: BatchAugment, x: Tensor, generator: torch.Generator | None = None, *,
              within: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Two independently augmented views of the same batch (SimCLR). Shapes: 2 x (B, 3, out, out).
    within: x is part of a larger batch (see BatchAugment.__call__)."""
    return aug(x, generator, within=within), aug(x, generator, within=within)  # type: ignore[return-value]


def supervised_augment(
    x: Tensor,
    *,
    out_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator | None = None,
    pad: int = 4,
    within: tuple[int, int] | None = None,
) -> Tensor:
    """Light training augmentation: random crop of the reflect-padded image + horizontal flip, per image.

    Integer shifts taken with two `gather`s (exact pixel copies, no interpolation), then a resize when
    out_size differs from the image size.

    Args:
        x: uint8 (0..255) or float ([0, 1]) images, (B, 3, S, S) or (B, S, S, 3).
        out_size: side of the output.
        mean, std: per-channel normalisation (3 values each).
        generator: makes the draws reproducible.
        pad: padding (and maximal shift) in pixels, 0 <= pad < S.
        within: (start, total): x is images start .. start + B of a batch of `total` split across processes;
            the shifts and flips are drawn for the whole batch and x gets its part's.

    Returns:
        float32 (B, 3, out_size, out_size).
    """
    _check_mean_std(mean, std)
    img = _as_float_nchw(x)
    n, c, height, width = img.shape
    if not 0 <= pad < min(height, width):
        raise ValueError(f"pad must be in [0, {min(height, width)}) for {height}x{width} images, got {pad}")
    sampler = _Sampler(generator, img.device)
    padded = F.pad(img, (pad, pad, pad, pad), mode="reflect") if pad else img
    drawn, start = (n, 0) if within is None else (within[1], within[0])
    top = (sampler.uniform(drawn) * (2 * pad + 1)).long().clamp_(max=2 * pad)[start:start + n]
    left = (sampler.uniform(drawn) * (2 * pad + 1)).long().clamp_(max=2 * pad)[start:start + n]
    flip = sampler.bernoulli(drawn, 0.5)[start:start + n]
    rows = top[:, None] + torch.arange(height, device=img.device)
    cols = left[:, None] + torch.arange(width, device=img.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded.gather(2, rows.view(n, 1, height, 1).expand(n, c, height, padded.shape[-1]))
    out = out.gather(3, cols.view(n, 1, 1, width).expand(n, c, height, width))
    return _finish(_resize(out, out_size), mean, std)


def to_model_input(x: Tensor, *, out_size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Evaluation input: no randomness. uint8 (B, S, S, 3) or (B, 3, S, S) -> normalised float32
    (B, 3, out_size, out_size), resized (bilinear, antialiased) when out_size != S."""
    _check_mean_std(mean, std)
    return _finish(_resize(_as_float_nchw(x), out_size), mean, std)


def mixup(x: Tensor, *, alpha: float, generator: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """Mixup of a batch with a shuffled copy of itself (Zhang et al. 2018): lam * x + (1 - lam) * x[perm].

    lam ~ Beta(alpha, alpha), one per batch, drawn by inverting the beta CDF at a uniform draw of
    `generator` (torch has no seeded beta sampler); perm is a random permutation of the batch from the
    same generator. The same generator state gives the same mix on every machine of one device type.

    Args:
        x: model input of any shape (B, ...), on any device.
        alpha: > 0; large values put lam near 0.5.
        generator: a seeded torch generator (the stage's augmentation stream).

    Returns:
        (mixed batch, perm of shape (B,) on x's device, lam).
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    u = float(torch.rand((), generator=generator, device=generator.device))
    lam = float(betaincinv(alpha, alpha, u))
    perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
    return lam * x + (1.0 - lam) * x.index_select(0, perm), perm, lam
