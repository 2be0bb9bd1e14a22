"""Batch augmentations: per-image parameters, determinism, geometry and colour against torchvision."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from engine.config import AugmentConfig
from engine.method.augment import BatchAugment, mixup, supervised_augment, to_model_input, two_views

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# no randomness at all: full crop, no flip, no jitter, no grayscale
IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)


def _images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random uint8 images, NHWC as in the image cache."""
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def _nchw01(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).float() / 255


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- BatchAugment


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "float"])
@pytest.mark.parametrize(("size", "out"), [(16, 16), (16, 24), (32, 12)])
def test_views_have_shape_dtype_and_range(layout: str, size: int, out: int) -> None:
    x = _images(5, size)
    x = {"nhwc": x, "nchw": x.permute(0, 3, 1, 2).contiguous(), "float": _nchw01(x)}[layout]
    view = BatchAugment(AugmentConfig(), out_size=out, mean=MEAN, std=STD)(x, _gen())
    assert view.shape == (5, 3, out, out) and view.dtype == torch.float32
    pixels = _unnormalise(view)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_layouts_give_identical_views() -> None:
    x = _images(4)
    aug = BatchAugment(AugmentConfig(), out_size=16, mean=MEAN, std=STD)
    from_nhwc = aug(x, _gen(3))
    torch.testing.assert_close(aug(x.permute(0, 3, 1, 2), _gen(3)), from_nhwc)
    torch.testing.assert_close(aug(_nchw01(x), _gen(3)), from_nhwc)


def test_images_in_one_batch_get_different_crops_and_jitters() -> None:
    cfg = dataclasses.replace(AugmentConfig(), jitter_p=1.0)
    _, params = BatchAugment(cfg, out_size=16, mean=MEAN, std=STD)(_images(2), _gen(1), return_params=True)
    assert not torch.allclose(params["crop"][0], params["crop"][1])
    assert (params["jitter"][0] != params["jitter"][1]).all()  # every one of the four factors differs


def test_per_image_parameters_vary_across_a_batch() -> None:
    _, params = BatchAugment(AugmentConfig(), out_size=16, mean=MEAN, std=STD)(
        _images(256), _gen(2), return_params=True
    )
    assert params["crop"][:, 2].unique().numel() > 200  # crop widths
    for key, p in (("flip", 0.5), ("jitter_applied", 0.8), ("gray", 0.2)):
        assert abs(params[key].float().mean().item() - p) < 0.1, key
    assert not params["blur_sigma"].any()  # blur is off by default


def test_seeded_generator_is_deterministic() -> None:
    x = _images(6)
    aug = BatchAugment(AugmentConfig(), out_size=16, mean=MEAN, std=STD)
    a, pa = aug(x, _gen(7), return_params=True)
    b, pb = aug(x, _gen(7), return_params=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=0, atol=0)
    assert not torch.allclose(a, aug(x, _gen(8)))


def test_two_views_differ_and_follow_the_generator() -> None:
    x = _images(4)
    aug = BatchAugment(AugmentConfig(), out_size=16, mean=MEAN, std=STD)
    v0, v1 = two_views(aug, x, _gen(5))
    assert v0.shape == v1.shape == (4, 3, 16, 16)
    assert not torch.allclose(v0, v1)
    g = _gen(5)
    torch.testing.assert_close((v0, v1), (aug(x, g), aug(x, g)))


def test_full_crop_without_jitter_reproduces_the_input() -> None:
    x = _images(3)
    view = BatchAugment(IDENTITY, out_size=16, mean=MEAN, std=STD)(x, _gen())
    torch.testing.assert_close(_unnormalise(view), _nchw01(x), rtol=0, atol=1e-5)


def test_flip_mirrors_the_image() -> None:
    x = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    x[:, :, :2] = 255  # a bright band on the left
    x[1, 3, 5] = 128
    view = BatchAugment(dataclasses.replace(IDENTITY, flip_p=1.0), out_size=8, mean=MEAN, std=STD)(x, _gen())
    torch.testing.assert_close(_unnormalise(view), _nchw01(x).flip(-1), rtol=0, atol=1e-5)
    assert _unnormalise(view)[:, :, :, -2:].min() > 0.99  # the band is now on the right


def test_crop_box_selects_the_right_pixels() -> None:
    """A crop of half the width/height at the drawn offset equals bilinear resampling of that box."""
    x = _images(4, 16)
    cfg = dataclasses.replace(IDENTITY, crop_scale=(0.25, 0.25))
    view, params = BatchAugment(cfg, out_size=8, mean=MEAN, std=STD)(x, _gen(4), return_params=True)
    left, top, w, h = params["crop"].unbind(1)
    torch.testing.assert_close(w, torch.full((4,), 8.0))  # area 64 px, ratio 1 -> 8 x 8
    torch.testing.assert_close(h, torch.full((4,), 8.0))
    for i in range(4):
        # an 8 x 8 box sampled on an 8 x 8 grid hits pixel centres: bilinear interpolation between the
        # four neighbours at the fractional offset
        img = _nchw01(x[i : i + 1])
        fx, fy = float(left[i] % 1), float(top[i] % 1)
        x0, y0 = int(left[i]), int(top[i])
        patch = img[..., y0 : y0 + 9, x0 : x0 + 9]
        patch = F.pad(patch, (0, 9 - patch.shape[-1], 0, 9 - patch.shape[-2]), mode="replicate")
        expected = (
            (1 - fy) * (1 - fx) * patch[..., :8, :8]
            + (1 - fy) * fx * patch[..., :8, 1:]
            + fy * (1 - fx) * patch[..., 1:, :8]
            + fy * fx * patch[..., 1:, 1:]
        )
        torch.testing.assert_close(_unnormalise(view[i : i + 1]), expected, rtol=0, atol=1e-4)


def test_grayscale_gives_equal_channels() -> None:
    cfg = dataclasses.replace(AugmentConfig(), gray_p=1.0)
    view = _unnormalise(BatchAugment(cfg, out_size=16, mean=MEAN, std=STD)(_images(4), _gen()))
    torch.testing.assert_close(view[:, 0], view[:, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(view[:, 0], view[:, 2], rtol=0, atol=1e-6)


def test_jitter_factors_stay_in_the_configured_ranges() -> None:
    cfg = dataclasses.replace(AugmentConfig(), jitter=(0.4, 0.2, 1.5, 0.1))
    _, params = BatchAugment(cfg, out_size=8, mean=MEAN, std=STD)(_images(512, 8), _gen(), return_params=True)
    j = params["jitter"]
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.8, 1.2), (0.0, 2.5), (-0.1, 0.1)]):
        assert lo <= j[:, col].min() and j[:, col].max() <= hi
        assert j[:, col].max() - j[:, col].min() > 0.9 * (hi - lo)  # the whole range is used
    assert sorted(params["jitter_order"].tolist()) == [0, 1, 2, 3]


def test_jitter_matches_torchvision_per_image() -> None:
    """Each image gets torchvision's brightness/contrast/saturation/hue with ITS OWN factors."""
    cfg = dataclasses.replace(IDENTITY, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=1.0)
    x = _images(6)
    view, params = BatchAugment(cfg, out_size=16, mean=MEAN, std=STD)(x, _gen(9), return_params=True)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(6):
        expected = _nchw01(x[i : i + 1])
        for op in params["jitter_order"].tolist():
            expected = ops[op](expected, float(params["jitter"][i, op]))
        torch.testing.assert_close(_unnormalise(view[i : i + 1]), expected, rtol=0, atol=2e-5)


def test_images_not_selected_for_jitter_are_unchanged() -> None:
    cfg = dataclasses.replace(IDENTITY, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.5)
    x = _images(32)
    view, params = BatchAugment(cfg, out_size=16, mean=MEAN, std=STD)(x, _gen(2), return_params=True)
    kept = ~params["jitter_applied"]
    assert 0 < kept.sum() < 32
    torch.testing.assert_close(_unnormalise(view[kept]), _nchw01(x)[kept], rtol=0, atol=1e-5)
    assert not torch.allclose(_unnormalise(view[~kept]), _nchw01(x)[~kept], atol=1e-3)


def test_blur_matches_torchvision_with_the_drawn_sigma() -> None:
    cfg = dataclasses.replace(IDENTITY, blur=True, blur_sigma=(0.5, 1.0))
    x = _images(16)
    view, params = BatchAugment(cfg, out_size=16, mean=MEAN, std=STD)(x, _gen(3), return_params=True)
    sigma = params["blur_sigma"]
    assert 0 < (sigma > 0).sum() < 16 and ((sigma == 0) | ((sigma >= 0.5) & (sigma <= 1.0))).all()
    for i in range(16):
        img = _nchw01(x[i : i + 1])
        s = float(sigma[i])
        expected = img if s == 0 else TF.gaussian_blur(img, kernel_size=[7, 7], sigma=[s, s])  # 3 * 1.0 -> 7 taps
        torch.testing.assert_close(_unnormalise(view[i : i + 1]), expected, rtol=0, atol=1e-5)


def test_batch_of_one() -> None:
    view, params = BatchAugment(AugmentConfig(), out_size=8, mean=MEAN, std=STD)(
        _images(1, 8), _gen(), return_params=True
    )
    assert view.shape == (1, 3, 8, 8) and params["crop"].shape == (1, 4) and params["jitter"].shape == (1, 4)


@pytest.mark.parametrize(
    ("cfg_changes", "message"),
    [
        ({"jitter": (0.4, 0.4, 0.4, 0.6)}, r"hue jitter must be in \[0, 0.5\]"),
        ({"jitter": (-0.1, 0.4, 0.4, 0.1)}, "contrast and saturation jitter must be >= 0"),
        ({"crop_scale": (0.5, 0.2)}, "crop_scale must satisfy"),
        ({"crop_ratio": (0.0, 1.0)}, "crop_ratio must satisfy"),
        ({"gray_p": 1.5}, r"jitter_p and gray_p must be in \[0, 1\]"),
    ],
)
def test_bad_config_is_rejected(cfg_changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchAugment(dataclasses.replace(AugmentConfig(), **cfg_changes), out_size=8, mean=MEAN, std=STD)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(2, 4, 8, 8, dtype=torch.uint8), r"must have shape \(B, 3, H, W\) or \(B, H, W, 3\)"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), r"must have shape \(B, 3, H, W\)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "must be uint8 or floating point"),
        (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), "empty batch"),
    ],
)
def test_bad_images_are_rejected(x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchAugment(AugmentConfig(), out_size=8, mean=MEAN, std=STD)(x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": (0.5, 0.5)}, "mean and std must have 3 values"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be > 0"),
        ({"out_size": 0}, "out_size must be >= 1"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    args = {"out_size": 8, "mean": MEAN, "std": STD} | kwargs
    with pytest.raises(ValueError, match=message):
        BatchAugment(AugmentConfig(), **args)


# ----------------------------------------------------------------------------- supervised_augment


def _pad_crops(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop (and its mirror) of the reflect-padded image: the naive reference."""
    size = img.shape[-1]
    padded = F.pad(img, (pad,) * 4, mode="reflect")
    crops = [padded[..., i : i + size, j : j + size] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return crops + [c.flip(-1) for c in crops]


def test_supervised_augment_is_a_padded_crop_with_flip_per_image() -> None:
    x = _images(8, 8)
    out = _unnormalise(supervised_augment(x, out_size=8, mean=MEAN, std=STD, generator=_gen(1), pad=2))
    assert out.shape == (8, 3, 8, 8) and out.dtype == torch.float32
    matches = []
    for i in range(8):
        candidates = _pad_crops(_nchw01(x[i : i + 1]), 2)
        hits = [k for k, c in enumerate(candidates) if torch.allclose(out[i : i + 1], c, atol=1e-6)]
        assert hits, f"image {i} is not a padded crop of its input"
        matches.append(hits[0])
    assert len(set(matches)) > 3  # different shifts/flips per image


def test_supervised_augment_is_deterministic_and_resizes() -> None:
    x = _images(4, 16)
    a = supervised_augment(x, out_size=8, mean=MEAN, std=STD, generator=_gen(3))
    b = supervised_augment(x, out_size=8, mean=MEAN, std=STD, generator=_gen(3))
    assert a.shape == (4, 3, 8, 8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_supervised_augment_without_padding_only_flips() -> None:
    x = _images(16, 8)
    out = _unnormalise(supervised_augment(x, out_size=8, mean=MEAN, std=STD, generator=_gen(2), pad=0))
    img = _nchw01(x)
    same = torch.isclose(out, img, atol=1e-6).flatten(1).all(1)
    mirrored = torch.isclose(out, img.flip(-1), atol=1e-6).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_supervised_augment_rejects_padding_as_large_as_the_image() -> None:
    with pytest.raises(ValueError, match=r"pad must be in \[0, 8\) for 8x8 images, got 8"):
        supervised_augment(_images(2, 8), out_size=8, mean=MEAN, std=STD, pad=8)


# ----------------------------------------------------------------------------- to_model_input


def test_to_model_input_normalises_exactly() -> None:
    x = _images(3, 8)
    expected = (_nchw01(x) - 0.5) / 0.25
    torch.testing.assert_close(to_model_input(x, out_size=8, mean=MEAN, std=STD), expected)
    torch.testing.assert_close(to_model_input(x.permute(0, 3, 1, 2), out_size=8, mean=MEAN, std=STD), expected)


def test_to_model_input_resizes() -> None:
    x = torch.full((2, 3, 16, 16), 200, dtype=torch.uint8)
    out = to_model_input(x, out_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255))  # a flat image stays flat


# ----------------------------------------------------------------------------- mixup


def test_mixup_is_deterministic_with_a_seed_and_mixes_partners() -> None:
    x = torch.randn(16, 3, 8, 8)
    a = mixup(x, alpha=32.0, generator=torch.Generator().manual_seed(5))
    b = mixup(x, alpha=32.0, generator=torch.Generator().manual_seed(5))
    c = mixup(x, alpha=32.0, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1]) and a[2] == b[2]
    assert not torch.equal(a[1], c[1]) and a[2] != c[2]
    mixed, perm, lam = a
    assert sorted(perm.tolist()) == list(range(16))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])


def test_mixup_lambda_follows_its_beta_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1)
    lams = torch.tensor([mixup(x, alpha=32.0, generator=g)[2] for _ in range(2000)])
    assert 0.0 <= lams.min() and lams.max() <= 1.0
    assert lams.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lams.std().item() == pytest.approx((1 / (4 * 65)) ** 0.5, rel=0.1)  # Beta(a, a): var 1 / (4 (2a + 1))
    spread = torch.tensor([mixup(x, alpha=0.2, generator=g)[2] for _ in range(500)])
    assert ((spread < 0.1) | (spread > 0.9)).float().mean() > 0.5  # small alpha: mostly one image or the other


def test_mixup_rejects_a_non_positive_alpha() -> None:
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mixup(torch.zeros(2, 1), alpha=0.0, generator=torch.Generator())
