"""Thumbnails of the source images, made with Pillow (never torch) and cached by path, size and mtime."""

from __future__ import annotations

import io
import os

import streamlit as st
from PIL import Image, ImageOps

from engine.data.decode import DecodeError, open_image, to_rgb

PLACEHOLDER_COLOUR = (230, 230, 230)


def make_thumbnail(path: str, size: int) -> bytes:
    """PNG bytes of `path` fitted into a `size` x `size` box (aspect ratio kept).

    Small images (the 8 px digits of the sample) are enlarged with nearest-neighbour so their pixels
    stay crisp; large ones are reduced, JPEGs at a reduced decode scale first (libjpeg draft mode).
    A file that cannot be read gives a grey placeholder, so one bad file never breaks a grid.
    """
    try:
        with open_image(path) as im:
            im.draft("RGB", (size, size))  # JPEG only: decode at 1/2..1/8 scale when that still covers `size`
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im))
    except (DecodeError, OSError, ValueError):
        rgb = Image.new("RGB", (size, size), PLACEHOLDER_COLOUR)
    width, height = rgb.size
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    rgb = rgb.resize(new_size, resample, reducing_gap=2.0 if scale < 1 else None)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=1)  # fast: thumbnails are made on demand, per page
    return buf.getvalue()


@st.cache_data(max_entries=4000, show_spinner=False)
def _cached_thumbnail(path: str, size: int, mtime: float) -> bytes:
    return make_thumbnail(path, size)


def thumbnail(path: str, size: int = 160) -> bytes:
    """Cached `make_thumbnail`; an edited file (new mtime) gets a new thumbnail."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        mtime = -1.0
    return _cached_thumbnail(path, size, mtime)
