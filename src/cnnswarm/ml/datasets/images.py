"""Safe image decoding and the one image -> array conversion (uploads and predict share it).

``decode_image`` keeps Pillow's decompression-bomb guard on and refuses its warning range too:
it checks the pixel count from the header before any pixel is decoded, and forces a full decode so a
truncated file fails here, naming the file, rather than later. ``image_to_array`` is the single
conversion to ``uint8 (C, H, W)``: so an image given to predict is turned into exactly what the
model saw in training.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cnnswarm.errors import InvalidInput

# Pillow's own default (~89 M pixels) when nothing stricter is asked for.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Modes that carry no colour; anything else is converted to RGB.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def decode_image(data: bytes, *, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Decode an encoded image fully; ``InvalidInput`` naming ``name`` if it is not one.

    Refused: non-images, truncated or corrupt files, and images over ``max_pixels`` (default
    Pillow's ``MAX_IMAGE_PIXELS``) -- checked from the header before decoding. Animated images
    give their first frame.
    """
    # Never looser than Pillow's own limit, and never off even if someone disabled Pillow's.
    pillow_limit = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_IMAGE_PIXELS
    limit = min(max_pixels, pillow_limit) if max_pixels else pillow_limit
    try:
        # Pillow checks the header size here (error past 2x its limit, a warning past 1x).
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        # Our check turns Pillow's warning range into a refusal too, without touching the
        # process-wide warning filters (not thread-safe, and predict runs in threads).
        if width <= 0 or height <= 0 or width * height > limit:
            raise InvalidInput(
                f"{name}: refused as a decompression bomb: {width}x{height} pixels is over "
                f"the limit of {limit} pixels"
            )
        image.load()
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"{name}: refused as a decompression bomb ({exc})") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        raise InvalidInput(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc
    return image


def is_grayscale(image: Image.Image) -> bool:
    """True when the image carries no colour (its mode is a grayscale mode)."""
    return image.mode in GRAYSCALE_MODES


def _to_8bit(image: Image.Image) -> Image.Image:
    """Image in mode ``L`` or ``RGB``; 16-bit and float grayscale scaled, not clipped."""
    if image.mode in _WIDE_GRAY_MODES:
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F":
            # 16-bit data (also stored in mode "I") spans 0..65535; 8-bit-in-I stays as is.
            values = values / 257.0 if values.max(initial=0) > 255 else values
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode in GRAYSCALE_MODES:
        return image.convert("L")
    # Alpha is dropped (as torchvision's loader does); palette and CMYK become RGB.
    return image if image.mode == "RGB" else image.convert("RGB")


def image_to_array(image: Image.Image, *, channels: int, height: int, width: int) -> np.ndarray:
    """The one conversion: any decoded image -> ``uint8 (channels, height, width)``.

    ``channels`` 1 means grayscale (``L``), 3 means RGB; the size is reached with a bilinear
    resize when it differs.
    """
    if channels not in (1, 3):
        raise InvalidInput(f"channels must be 1 or 3, got {channels}", field="channels")
    mode = "L" if channels == 1 else "RGB"
    converted = _to_8bit(image)
    if converted.mode != mode:
        converted = converted.convert(mode)
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    if channels == 1:
        return array[np.newaxis, :, :].copy()
    return np.ascontiguousarray(array.transpose(2, 0, 1))
