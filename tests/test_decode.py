"""engine.data.decode: every colour mode to RGB, EXIF orientation, resize + center crop, human error reasons."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.decode import DecodeError, check_image, decode_image, open_rgb


def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def _solid(tmp_path: Path, mode: str, value, fmt: str = "PNG", size=(6, 4), **kw) -> Path:
    ext = {"PNG": "png", "TIFF": "tif", "JPEG": "jpg"}[fmt]
    return _save(Image.new(mode, size, value), tmp_path / f"img_{mode.replace(';', '_')}.{ext}", format=fmt, **kw)


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "expected"),
    [
        ("RGB", (10, 20, 30), "PNG", (10, 20, 30)),
        ("L", 100, "PNG", (100, 100, 100)),
        ("1", 1, "PNG", (255, 255, 255)),
        ("LA", (50, 0), "PNG", (255, 255, 255)),  # fully transparent grey -> white paper
        ("LA", (50, 255), "PNG", (50, 50, 50)),
        ("RGBA", (0, 0, 0, 0), "PNG", (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), "PNG", (10, 20, 30)),
        ("CMYK", (0, 0, 0, 0), "TIFF", (255, 255, 255)),
        ("CMYK", (255, 0, 0, 0), "TIFF", (0, 255, 255)),  # pure cyan
        ("I;16", 65535, "PNG", (255, 255, 255)),
        ("I;16", 257 * 100, "PNG", (100, 100, 100)),
        ("I;16", 0, "PNG", (0, 0, 0)),
        ("I", 65535, "TIFF", (255, 255, 255)),  # 32-bit ints holding 16-bit data
        ("I", 200, "TIFF", (200, 200, 200)),  # 32-bit ints holding 8-bit data
        ("F", 0.5, "TIFF", (128, 128, 128)),  # fractions of white
        ("F", 200.0, "TIFF", (200, 200, 200)),
    ],
)
def test_every_mode_becomes_rgb_with_known_values(tmp_path, mode, value, fmt, expected):
    path = _solid(tmp_path, mode, value, fmt)
    assert Image.open(path).mode.startswith(mode[:1])  # the file really has the mode under test
    out = decode_image(path, 4)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert np.all(out == np.array(expected, dtype=np.uint8)), out[0, 0]


def test_half_transparent_black_is_mid_grey_on_white(tmp_path):
    out = decode_image(_solid(tmp_path, "RGBA", (0, 0, 0, 128)), 2)
    assert np.all(np.abs(out.astype(int) - 127) <= 1)


def test_palette_transparency_composited_on_white(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red (transparent), 1 blue
    for x in range(4):
        im.putpixel((x, 3), 1)
    path = _save(im, tmp_path / "p.png", transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    rgb = np.asarray(open_rgb(path))
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # transparent red -> white, never red
    assert tuple(rgb[3, 0]) == (0, 0, 255)


def test_palette_without_transparency(tmp_path):
    im = Image.new("P", (3, 3), 1)
    im.putpalette([0, 0, 0, 12, 200, 34] + [0] * 762)
    rgb = np.asarray(open_rgb(_save(im, tmp_path / "p.gif")))
    assert tuple(rgb[1, 1]) == (12, 200, 34)


def _two_halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_6_rotates_a_non_square_image(tmp_path, fmt):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    path = _save(_two_halves(40, 20), tmp_path / f"o.{fmt.lower()}", format=fmt, exif=exif.tobytes())
    assert Image.open(path).getexif().get(0x0112) == 6
    upright = np.asarray(open_rgb(path)).astype(int)
    assert upright.shape == (40, 20, 3)  # width and height swapped
    assert upright[3, 10, 0] > 200 and upright[3, 10, 2] < 60  # the left (red) half is now on top
    assert upright[36, 10, 2] > 200 and upright[36, 10, 0] < 60
    out = decode_image(path, 20).astype(int)  # center crop of rows 10..30: red above blue
    assert out[2, 10, 0] > 200 and out[17, 10, 2] > 200


@pytest.mark.parametrize(("width", "height"), [(60, 20), (20, 60)])
def test_shorter_side_resized_then_center_cropped(tmp_path, width, height):
    arr = np.zeros((height, width, 3), np.uint8)
    third = max(width, height) // 3
    if width > height:
        arr[:, :third], arr[:, third : 2 * third], arr[:, 2 * third :] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    else:
        arr[:third], arr[third : 2 * third], arr[2 * third :] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    out = decode_image(_save(Image.fromarray(arr), tmp_path / "wide.png"), 10).astype(int)
    assert out.shape == (10, 10, 3)
    assert np.all(out[2:8, 2:8] == (0, 255, 0))  # only the middle third survives the crop
    assert out[..., 1].min() > 200  # the red and blue thirds are cropped away (edges barely touched)


def test_small_image_upscaled_and_large_jpeg_downscaled_close_to_full_decode(tmp_path):
    small = decode_image(_save(Image.new("L", (8, 8), 77), tmp_path / "s.png"), 32)
    assert small.shape == (32, 32, 3) and np.all(small == 77)
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((1600, 1200), Image.BICUBIC)
    path = _save(base, tmp_path / "big.jpg", quality=95)
    fast = decode_image(path, 32).astype(float)  # reduced-scale JPEG decode
    with Image.open(path) as im:  # reference: full decode, same crop and filter
        reference = np.asarray(im.convert("RGB").resize((32, 32), Image.BICUBIC, box=(200, 0, 1400, 1200)))
    assert np.abs(fast - reference).mean() < 3.0


def test_bytes_and_path_decode_identically(tmp_path):
    path = _solid(tmp_path, "RGB", (1, 2, 3), size=(30, 20))
    assert np.array_equal(decode_image(path.read_bytes(), 8), decode_image(path, 8))
    assert np.array_equal(decode_image(str(path), 8), decode_image(path, 8))


@pytest.mark.parametrize(
    ("writer", "reason"),
    [
        (lambda p, f: p.write_bytes(b""), "empty file"),
        (lambda p, f: p.write_text("this is not a picture"), "not an image"),
        (lambda p, f: f["trunc"](p, "PNG"), "truncated file"),
        (lambda p, f: f["trunc"](p, "JPEG"), "truncated file"),
        (lambda p, f: f["bomb"](p, 30_000, 30_000), "decompression bomb: 900000000 pixels > limit"),
        (lambda p, f: f["bomb"](p, 10_000, 9_000), "decompression bomb: 90000000 pixels > limit"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "bomb-2x", "bomb-just-over"],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets decode's own filter
def test_errors_have_human_reasons(tmp_path, make_truncated, make_bomb_png, writer, reason):
    path = tmp_path / "bad.jpg"
    writer(path, {"trunc": make_truncated, "bomb": make_bomb_png})
    with pytest.raises(DecodeError) as err:
        decode_image(path, 8)
    assert err.value.reason.startswith(reason), err.value.reason
    with pytest.raises(DecodeError):
        check_image(path, full=True)


def test_header_check_misses_truncated_jpeg_but_full_check_catches_it(tmp_path, make_truncated):
    path = make_truncated(tmp_path / "cut.jpg", "JPEG")
    assert check_image(path, full=False) == (64, 48)
    with pytest.raises(DecodeError, match="truncated file"):
        check_image(path, full=True)


def test_pixel_limit_and_other_failures(tmp_path):
    path = _solid(tmp_path, "RGB", (0, 0, 0), size=(40, 30))
    with pytest.raises(DecodeError, match=r"decompression bomb: 1200 pixels > limit 1000"):
        decode_image(path, 8, max_pixels=1000)
    with pytest.raises(DecodeError, match="file not found"):
        decode_image(tmp_path / "missing.png", 8)
    with pytest.raises(DecodeError, match="empty file"):
        decode_image(b"", 8)
    with pytest.raises(ValueError, match="positive"):
        decode_image(path, 0)


def test_open_rgb_keeps_full_size(tmp_path):
    path = _save(Image.new("RGBA", (37, 23), (5, 6, 7, 255)), tmp_path / "a.png")
    im = open_rgb(path)
    assert im.mode == "RGB" and im.size == (37, 23)
    assert im.getpixel((0, 0)) == (5, 6, 7)
    assert np.array_equal(np.asarray(open_rgb(io.BytesIO(path.read_bytes()).getvalue())), np.asarray(im))
