"""Image decoding: any file Pillow reads -> an RGB picture, or a square uint8 array at the working size.

Every image reaches the models through `decode_image`, so its policy is the data policy of the whole
engine:

* every colour mode becomes 8-bit RGB: transparency is composited on white (a transparent background
  is "paper", not black), 16-bit greys are scaled by 255/65535, palettes are expanded;
* the EXIF orientation is applied, so a phone photo is seen upright, as a person sees it;
* the shorter side is resized to `size` and the longer side is center-cropped to `size`, so the
  aspect ratio is kept and the middle of the picture (where the subject usually is) is what remains.

Errors become `DecodeError` with a reason a person can act on ("truncated file", "not an image", ...).
This module imports no torch: the app uses `open_rgb` for thumbnails.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow warns for images between its pixel limit and twice that limit; we turn every image over the
# limit into an explicit DecodeError instead, so the warning would only repeat what the error says.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

DEFAULT_MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 0) or 89_478_485
WHITE = (255, 255, 255)
# A JPEG is decoded at a reduced scale (1/2 .. 1/8, done inside libjpeg) as long as the result stays at
# least this many times the working size, so the final resize still has pixels to average over.
_DRAFT_MARGIN = 2

ImageSource = str | os.PathLike | bytes | bytearray | memoryview


class DecodeError(ValueError):
    """An image that cannot be used; `reason` is short and meant for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def open_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open lazily (header only) and enforce the pixel limit.

    Raises:
        DecodeError: empty file, missing file, not an image, or more pixels than `max_pixels`.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise DecodeError("empty file")
        fp: str | os.PathLike | io.BytesIO = io.BytesIO(bytes(source))
    else:
        fp = source
        try:
            if os.stat(source).st_size == 0:
                raise DecodeError("empty file")
        except FileNotFoundError as e:
            raise DecodeError("file not found") from e
        except PermissionError as e:
            raise DecodeError("cannot read file (permission denied)") from e
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {_bomb_detail(str(e), max_pixels)}") from e
    except UnidentifiedImageError as e:
        raise DecodeError("not an image (unrecognised file format)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise _as_decode_error(e) from e
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise DecodeError(f"decompression bomb: {width * height} pixels > limit {max_pixels}")
    if width == 0 or height == 0:
        im.close()
        raise DecodeError("image has no pixels")
    return im


def check_image(source: ImageSource, *, full: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Raise DecodeError when the image is unusable; return its (width, height).

    `full=False` reads the header and lets Pillow verify what it can without decoding (PNG chunk
    checksums, for instance); `full=True` decodes every byte, which is the only way to catch a JPEG
    cut short. JPEGs are decoded at reduced scale for the full check: the whole stream is still read.
    """
    with open_image(source, max_pixels=max_pixels) as im:
        size = im.size
        try:
            if full:
                im.draft(None, (64, 64))
                im.load()
            else:
                im.verify()
        except Image.DecompressionBombError as e:
            raise DecodeError(f"decompression bomb: {_bomb_detail(str(e), max_pixels)}") from e
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            raise _as_decode_error(e) from e
    return size


def open_rgb(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The full-size picture as 8-bit RGB, upright (EXIF orientation applied): for thumbnails and review."""
    with open_image(source, max_pixels=max_pixels) as im:
        return _load_rgb(im, draft_size=None)


def decode_image(source: ImageSource, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image to the square working size.

    Args:
        source: a path, or the encoded file's bytes.
        size: working size S in pixels.
        max_pixels: images with more pixels are refused as decompression bombs.

    Returns:
        (S, S, 3) uint8 array: shorter side resized to S, longer side center-cropped to S.

    Raises:
        DecodeError: with a human reason.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    with open_image(source, max_pixels=max_pixels) as im:
        rgb = _load_rgb(im, draft_size=size * _DRAFT_MARGIN)
    return np.asarray(_resize_center_crop(rgb, size), dtype=np.uint8)


def _load_rgb(im: Image.Image, *, draft_size: int | None) -> Image.Image:
    try:
        if draft_size is not None:
            # For JPEGs this asks libjpeg for a 1/2, 1/4 or 1/8 scale decode (both sides stay >= draft_size):
            # a 4000 px photo decodes several times faster; other formats ignore the request.
            im.draft(None, (draft_size, draft_size))
        im.load()
        upright = ImageOps.exif_transpose(im)  # a copy: the caller may close `im`
        return to_rgb(upright)
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {_bomb_detail(str(e), DEFAULT_MAX_PIXELS)}") from e
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise _as_decode_error(e) from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (see the module docstring for the policy)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_high_depth_to_uint8(im)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # "transparency" covers palette images with a transparent index and L/RGB images with a tRNS colour.
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba).convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV, RGBX: Pillow's own conversions
    except ValueError as e:
        raise DecodeError(f"unsupported colour mode {mode}") from e


def _high_depth_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float greys -> uint8 with a fixed (not per-image) scale.

    A fixed scale keeps two exposures of the same scene comparable. 16-bit: 0..65535 -> 0..255.
    Mode "I" (32-bit ints) holds 8-bit or 16-bit data depending on the writer: values above 255 mean
    16-bit. Mode "F": values in [0, 1] are fractions of white, anything else is read as 0..255.
    """
    arr = np.asarray(im)
    if im.mode == "F":
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = arr.astype(np.int64)
    if im.mode == "I" and (a.size == 0 or a.max() <= 255):
        return np.clip(a, 0, 255).astype(np.uint8)
    a = np.clip(a, 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)  # rounded: 65535 -> 255, 257 -> 1


def _resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side -> `size`, center crop of the longer side (ImageOps.fit computes the same box,
    but cannot pass `reducing_gap`, which makes large downscales several times faster)."""
    width, height = im.size
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    box = (left, top, left + side, top + side)
    if width == height == size:
        return im
    return im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def _as_decode_error(e: BaseException) -> DecodeError:
    text = str(e)
    lowered = text.lower()
    if isinstance(e, EOFError) or "truncated" in lowered or "broken data stream" in lowered:
        return DecodeError("truncated file")
    if isinstance(e, MemoryError):
        return DecodeError("image too large to decode in memory")
    return DecodeError(f"corrupt image ({text or type(e).__name__})")


def _bomb_detail(message: str, limit: int) -> str:
    # Pillow's message reads "Image size (N pixels) exceeds limit of M pixels, ..."
    digits = [int(tok) for tok in message.replace("(", " ").split() if tok.isdigit()]
    if digits:
        return f"{digits[0]} pixels > limit {limit}"
    return message

