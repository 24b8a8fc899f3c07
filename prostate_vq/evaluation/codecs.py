"""Classical image codecs at the model's rate: what an ordinary codec keeps of the same slice in the same bits.

Per slice, each codec gets the highest quality whose whole file (headers included) fits the model's budget,
bits per pixel x H x W; a slice no quality fits is recorded as not fitting (scores NaN, `fits` False), so the
table says where a codec cannot go that low. Slices are coded as 8-bit greyscale from the same [0, 1] scaling
the model sees, and scored with the same SSIM and PSNR (evaluation.metrics). Pillow does the coding (WebP,
AVIF, JPEG 2000, JPEG); JPEG XL comes from `imagecodecs` when it is installed.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from prostate_vq.errors import UserInputError

CODEC_NAMES = ("webp", "avif", "jpeg2000", "jpeg", "jpegxl")


@dataclass(frozen=True)
class Codec:
    name: str
    qualities: tuple  # the settings searched, worst quality first (file size grows along them)
    encode: Callable[[np.ndarray, object], bytes]
    decode: Callable[[bytes], np.ndarray]


def _pillow(fmt: str, options: Callable[[object], dict]) -> tuple[Callable, Callable]:
    from PIL import Image

    def encode(pixels: np.ndarray, quality) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format=fmt, **options(quality))
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L"))

    return encode, decode


def _available_pillow(feature: str) -> bool:
    from PIL import features

    return bool(features.check(feature))


def get_codec(name: str) -> Codec:
    """A codec by name; one line naming the missing library when this environment lacks it."""
    if name == "webp":
        if not _available_pillow("webp"):
            raise UserInputError("--codecs webp: this Pillow has no WebP support (pip install -U pillow)")
        return Codec(name, tuple(range(0, 101)), *_pillow("WEBP", lambda q: {"quality": q, "method": 6}))
    if name == "avif":
        if not _available_pillow("avif"):
            raise UserInputError("--codecs avif: this Pillow has no AVIF support (pip install -U 'pillow>=11.3')")
        return Codec(name, tuple(range(0, 101)), *_pillow("AVIF", lambda q: {"quality": q, "speed": 6}))
    if name == "jpeg2000":
        if not _available_pillow("jpg_2000"):
            raise UserInputError("--codecs jpeg2000: this Pillow has no OpenJPEG support (pip install -U pillow)")
        # Compression ratios (of the raw 8-bit size) from 400:1 down to 1:1, geometrically spaced.
        ratios = tuple(float(r) for r in np.geomspace(400.0, 1.0, 120))
        return Codec(
            name, ratios, *_pillow("JPEG2000", lambda r: {"quality_mode": "rates", "quality_layers": [r], "irreversible": True})
        )
    if name == "jpeg":
        return Codec(name, tuple(range(1, 96)), *_pillow("JPEG", lambda q: {"quality": q, "optimize": True}))
    if name == "jpegxl":
        try:
            import imagecodecs
        except ImportError:
            raise UserInputError("--codecs jpegxl needs imagecodecs (pip install 'prostate-vq[codecs]')") from None
        if not getattr(imagecodecs, "JPEGXL", None) or not imagecodecs.JPEGXL.available:
            raise UserInputError("--codecs jpegxl: this imagecodecs has no JPEG XL support")
        return Codec(
            name,
            tuple(range(1, 100)),
            lambda px, q: bytes(imagecodecs.jpegxl_encode(px, level=q)),
            lambda data: np.asarray(imagecodecs.jpegxl_decode(data)),
        )
    raise UserInputError(f"--codecs: unknown codec {name!r}; choose from {', '.join(CODEC_NAMES)}")


def parse_codecs(text) -> list[str]:
    """`webp,avif` -> ['webp', 'avif'] (each checked to be available here before any slice is coded)."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text or []) if n.strip()]
    names = [{"j2k": "jpeg2000", "jpg": "jpeg", "jxl": "jpegxl"}.get(n, n) for n in names]
    if len(set(names)) != len(names):
        raise UserInputError(f"--codecs lists a codec twice: {', '.join(names)}")
    for name in names:
        get_codec(name)
    return names


def to_pixels(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float slice as 8-bit greyscale (the codecs' input)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


_CACHE: dict[tuple, tuple] = {}  # (codec, budget, slice digest) -> result: a sweep's jobs share slices and rates
_CACHE_MAX = 50_000


def code_at_budget(codec: Codec, image: np.ndarray, budget_bits: float) -> tuple[np.ndarray | None, int | None]:
    """The decoded slice at the best quality whose file fits `budget_bits`, and its size in bits; (None, None)
    when no quality fits. Binary search over the codec's settings (file size grows with them; a setting whose
    file does not fit ends the search on its side)."""
    pixels = to_pixels(image)
    key = (codec.name, float(budget_bits), pixels.shape, hashlib.sha1(pixels.tobytes()).hexdigest())
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = _search(codec, pixels, budget_bits)
    return _CACHE[key]


def _search(codec: Codec, pixels: np.ndarray, budget_bits: float) -> tuple[np.ndarray | None, int | None]:
    settings = codec.qualities
    lo, hi, best = 0, len(settings) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = codec.encode(pixels, settings[mid])
        if 8 * len(data) <= budget_bits:
            best, lo = (mid, data), mid + 1
        else:
            hi = mid - 1
    if best is None:
        return None, None
    decoded = codec.decode(best[1]).astype(np.float32) / 255.0
    return decoded, 8 * len(best[1])


def run_codecs(names: list[str], images: list[np.ndarray], bits_per_pixel: float) -> dict[str, dict[str, np.ndarray]]:
    """Per codec: per-slice reconstructions scored with the model's metrics. Returns
    {codec: {"ssim", "psnr", "bpp", "fits"}} arrays in slice order."""
    import torch

    from prostate_vq.evaluation.metrics import reconstruction_per_slice

    out = {}
    for name in names:
        codec = get_codec(name)
        ssim, psnr, bpp, fits = [], [], [], []
        for image in images:
            h, w = image.shape[-2:]
            decoded, bits = code_at_budget(codec, image, bits_per_pixel * h * w)
            if decoded is None:
                ssim.append(np.nan)
                psnr.append(np.nan)
                bpp.append(np.nan)
                fits.append(False)
                continue
            ref = torch.as_tensor(np.asarray(image, dtype=np.float32)).reshape(1, 1, h, w)
            scores = reconstruction_per_slice(torch.as_tensor(decoded).reshape(1, 1, h, w), ref)
            ssim.append(float(scores["ssim"][0]))
            psnr.append(float(scores["psnr"][0]))
            bpp.append(bits / (h * w))
            fits.append(True)
        out[name] = {"ssim": np.asarray(ssim), "psnr": np.asarray(psnr), "bpp": np.asarray(bpp), "fits": np.asarray(fits)}
    return out
