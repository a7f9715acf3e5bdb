"""Image grids with a class name at the start of each row."""

from __future__ import annotations

import os
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from .._io import atomic_path


def make_image_grid(images: list[PIL.Image.Image], rows: int, row_labels: list[str] | None = None, label_width: int | None = None) -> PIL.Image.Image:
    """Images laid out row by row (``len(images) / rows`` columns, diffusers' ``make_image_grid``),
    with an optional column of row labels on the left."""
    from diffusers.utils import make_image_grid as grid_of

    if rows < 1 or len(images) % rows:
        raise ValueError(f"{len(images)} images do not fill {rows} rows evenly")
    body = grid_of([image.convert("RGB") for image in images], rows=rows, cols=len(images) // rows)
    if row_labels is None:
        return body
    font = PIL.ImageFont.load_default()
    if label_width is None:
        probe = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
        label_width = max(int(probe.textlength(text, font=font)) for text in row_labels) + 12
    grid = PIL.Image.new("RGB", (label_width + body.width, body.height), "white")
    grid.paste(body, (label_width, 0))
    draw = PIL.ImageDraw.Draw(grid)
    row_height = body.height // rows
    for r, text in enumerate(row_labels):
        draw.text((6, r * row_height + row_height // 2), text, fill="black", font=font, anchor="lm")
    return grid


def save_image_grid(images, rows: int, path: str | os.PathLike, row_labels: list[str] | None = None) -> Path:
    """Write the grid to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    grid = make_image_grid(list(images), rows, row_labels)
    with atomic_path(path) as tmp:
        grid.save(tmp, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
    return path
