"""PNG previews a person can read: cropped to where the data is, shapes outlined, with a legend.

Shared by the prediction preview (`geolabel.predict.render_preview`) and the map-update preview,
so both crop the same way and carry the same kind of key. Outlines are drawn in the class or
status colour inside a black halo, which stays visible on any roof colour (a translucent fill
of the same hue as the roof is not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

HALO = (0, 0, 0)
LEGEND_BACKGROUND = (255, 255, 255)
LEGEND_TEXT = (20, 20, 20)


def data_extent(valid: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """(rows, cols) slices of the smallest box holding every True pixel of `valid`, plus a margin
    (the whole array when nothing is valid)."""
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if not rows.size:
        return slice(0, valid.shape[0]), slice(0, valid.shape[1])
    return (slice(max(rows[0] - margin, 0), rows[-1] + 1 + margin),
            slice(max(cols[0] - margin, 0), cols[-1] + 1 + margin))


def outline_masks(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edge, halo): the pixels on the border of `mask`'s regions, and the ring just outside them."""
    edge = mask & ~ndimage.binary_erosion(mask, border_value=1)
    halo = ndimage.binary_dilation(mask) & ~mask
    return edge, halo


def with_legend(image: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]],
                title: str | None = None) -> Image.Image:
    """`image` with a legend strip below it: one outlined swatch and label per (label, colour)."""
    width = image.width
    font = ImageFont.load_default(size=int(np.clip(width / 50, 10, 16)))
    pad, box = 4, int(np.clip(width / 50, 10, 16))
    items = ([(title, None)] if title else []) + list(entries)
    lines, line, x = [], [], pad
    for label, color in items:  # lay out left to right, wrapping at the image width
        w = (box + pad if color is not None else 0) + int(font.getlength(label)) + 3 * pad
        if line and x + w > width:
            lines.append(line)
            line, x = [], pad
        line.append((x, label, color))
        x += w
    lines.append(line)
    height = len(lines) * (box + 2 * pad) + pad
    canvas = Image.new("RGB", (width, image.height + height), LEGEND_BACKGROUND)
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        y = image.height + pad + i * (box + 2 * pad)
        for x, label, color in line:
            if color is not None:
                draw.rectangle([x, y, x + box, y + box], fill=tuple(color), outline=HALO, width=2)
                x += box + pad
            draw.text((x, y + box / 2), label, fill=LEGEND_TEXT, font=font, anchor="lm")
    return canvas
