"""Image augmentation for image columns: random horizontal flip, crop with padding, brightness.

Columns hold raw ``uint8`` pixels (a list column, with ``augment.image_shape`` = H, W, C)
or encoded PNG/JPEG bytes (decoded with Pillow, re-encoded as PNG). Each row's randomness
comes from its hash, as everywhere in the pipeline.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from .config import AugmentConfig

__all__ = ["augment_images", "augment_image"]


def augment_image(image: np.ndarray, h: int, config: AugmentConfig) -> np.ndarray:
    """Augment one ``H x W x C`` uint8 image with the randomness of hash ``h``."""
    rng = np.random.default_rng(h)
    out = image
    if config.flip and rng.random() < 0.5:
        out = out[:, ::-1]
    if config.crop_padding:
        p = config.crop_padding
        padded = np.pad(out, ((p, p), (p, p), (0, 0)), mode="constant")
        top, left = rng.integers(0, 2 * p + 1, size=2)
        out = padded[top:top + image.shape[0], left:left + image.shape[1]]
    if config.brightness:
        factor = 1.0 + rng.uniform(-config.brightness, config.brightness)
        out = np.clip(out.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def augment_images(column: pa.Array, hashes: np.ndarray, config: AugmentConfig) -> pa.Array:
    """Augment every image of ``column`` (nulls stay null)."""
    encoded = pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
    if not encoded and not config.image_shape:
        raise ValueError("Invalid value for `augment.image_shape`: None. Raw pixel columns need [H, W, C].")
    out = []
    for value, h in zip(column.to_pylist(), hashes.tolist()):
        if value is None:
            out.append(None)
            continue
        if encoded:
            from PIL import Image

            with Image.open(io.BytesIO(value)) as img:
                pixels = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
            squeeze = pixels.ndim == 2
            result = augment_image(pixels[..., None] if squeeze else pixels, h, config)
            buffer = io.BytesIO()
            Image.fromarray(result[..., 0] if squeeze else result).save(buffer, format="PNG")
            out.append(buffer.getvalue())
        else:
            pixels = np.asarray(value, np.uint8).reshape(config.image_shape)
            out.append(augment_image(pixels, h, config).reshape(-1).tolist())
    return pa.array(out, column.type)
