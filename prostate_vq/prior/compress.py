"""Entropy coding of code maps under a trained prior: `encode --compress PRIOR` and `decode`.

The nominal rate (log2 K bits per code) is what a VQ-VAE costs when every code is equally likely. A prior
predicts each code from the earlier ones, and an entropy coder turns those predictions into a bitstream of
about the prior's negative log-likelihood: the rate the codes really take.

Coder: constriction's range coder (``stream.queue``), one ``Categorical(perfect=False)`` per code whose
probabilities are the float64 softmax of the prior's logits (a well-kept coder, not a hand-written one).
One bitstream per slice (32-bit words, no header: the slice size, model and prior are the file's, in ``meta``).

Exactness: encoder and decoder walk the code map with the same stepper (``CodePrior.fill``) on the same partial
maps, in chunks of the same slices, on the CPU in float32, so the probabilities they see are bitwise equal and
the decoded codes equal the encoded ones. Decode on the CPU with the same prior (its fingerprint is checked).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from prostate_vq.errors import UserInputError
from prostate_vq.files import atomic_open
from prostate_vq.prior.codes import CodeLayout, encode_split, slice_columns, write_codes

CODER = (
    "constriction.stream.queue.RangeEncoder, one Categorical(perfect=False) per code from the float64 softmax "
    "of the prior's logits, raster order (CodePrior.fill), one stream of 32-bit words per slice"
)
CHUNK = 16  # slices stepped together; encoder and decoder use the same chunks


def _constriction():
    try:
        import constriction
    except ImportError:
        raise UserInputError("entropy coding needs the constriction library: pip install 'prostate-vq[compress]'") from None
    return constriction


def prior_fingerprint(prior) -> str:
    """SHA-256 of the prior's weights: a stream decodes only under the prior that coded it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(prior.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _level_probabilities(prior, logits: torch.Tensor) -> list[np.ndarray]:
    return [torch.softmax(part.double(), dim=1).numpy() for part in torch.split(logits, prior.vocab_sizes, dim=1)]


def _encode_chunk(prior, known: torch.Tensor, family, queue) -> list[np.ndarray]:
    flat = known.reshape(len(known), -1, known.shape[-1]).numpy().astype(np.int32)
    encoders = [queue.RangeEncoder() for _ in range(len(known))]
    position = itertools.count()

    def encode(logits: torch.Tensor) -> torch.Tensor:
        symbols = flat[:, next(position)]  # [n, depth]
        for level, probs in enumerate(_level_probabilities(prior, logits)):
            for b, encoder in enumerate(encoders):
                encoder.encode(symbols[b, level : level + 1], family, probs[b : b + 1])
        return torch.from_numpy(symbols.astype(np.int64))

    prior.fill(torch.zeros_like(known), encode)  # the decoder's partial maps, not the known ones
    return [encoder.get_compressed() for encoder in encoders]


def _decode_chunk(prior, streams: list[np.ndarray], grid: tuple[int, int], family, queue) -> torch.Tensor:
    decoders = [queue.RangeDecoder(np.asarray(s, dtype=np.uint32)) for s in streams]

    def decode(logits: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(decoders), prior.depth, dtype=torch.long)
        for level, probs in enumerate(_level_probabilities(prior, logits)):
            for b, decoder in enumerate(decoders):
                out[b, level] = int(decoder.decode(family, probs[b : b + 1])[0])
        return out

    work = torch.zeros(len(decoders), *grid, prior.depth, dtype=torch.long)
    prior.fill(work, decode)
    return work


@torch.no_grad()
def compress_codes(prior, codes: torch.Tensor, chunk: int = CHUNK) -> list[np.ndarray]:
    """``[N, h, w, depth]`` prior codes -> one uint32 bitstream per map (the prior on the CPU, in eval mode)."""
    stream = _constriction().stream
    family = stream.model.Categorical(perfect=False)
    codes = codes.long().cpu()
    streams: list[np.ndarray] = []
    for start in range(0, len(codes), chunk):
        streams += _encode_chunk(prior, codes[start : start + chunk], family, stream.queue)
    return streams


@torch.no_grad()
def decompress_codes(prior, streams: list[np.ndarray], grid: tuple[int, int], chunk: int = CHUNK) -> torch.Tensor:
    """The inverse of ``compress_codes``: ``[N, h, w, depth]`` codes from the bitstreams."""
    stream = _constriction().stream
    family = stream.model.Categorical(perfect=False)
    return torch.cat(
        [
            _decode_chunk(prior, streams[start : start + chunk], grid, family, stream.queue)
            for start in range(0, len(streams), chunk)
        ]
    )


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _rates(prior, codes: torch.Tensor, streams: list[np.ndarray], layout: CodeLayout, spatial) -> dict:
    from prostate_vq.prior.train import mean_nll_bits

    pixels = int(spatial[0]) * int(spatial[1])
    per_map = layout.codes_per_map
    stream_bits = np.asarray([32 * len(s) for s in streams], dtype=np.float64)
    return {
        "nominal_bits_per_pixel": layout.uniform_bits_per_code * per_map / pixels,
        "nll_bits_per_pixel": mean_nll_bits(prior, codes, 64, torch.device("cpu")) * per_map / pixels,
        "coded_bits_per_pixel": float(stream_bits.mean()) / pixels,
        "coded_bits_per_pixel_max": float(stream_bits.max()) / pixels,
        "slices": len(streams),
        "pixels_per_slice": pixels,
    }


def compress_dataset(
    checkpoint: str | Path,
    prior_path: str | Path,
    data: str | Path | None = None,
    split: str = "train",
    out: str | Path = "codes.npz",
    max_slices: int | None = None,
) -> dict:
    """`prostate-vq encode --compress PRIOR`: write the split's codes entropy-coded under the prior; returns
    the rates (nominal, prior NLL, coded streams and whole file, in bits per pixel)."""
    from prostate_vq.prior.sample import load_prior

    out = Path(out)
    if out.suffix != ".npz":
        raise UserInputError("the output must be an .npz file", out)
    _constriction()
    prior, vqvae, layout, _ = load_prior(prior_path, "cpu")
    model, dataset, indices, meta = encode_split(checkpoint, data, split, "cpu", max_slices=max_slices)
    if not _same_weights(model.state_dict(), vqvae.state_dict()):
        raise UserInputError("this prior was trained on the codes of another VQ-VAE than --checkpoint", prior_path)
    codes = layout.to_prior(torch.from_numpy(indices))
    streams = compress_codes(prior, codes)
    rates = _rates(prior, codes, streams, layout, meta["spatial_size"])
    meta.update(
        {
            "codes_layout": "entropy-coded: run `prostate-vq decode`",
            "coder": CODER,
            "chunk": CHUNK,
            "prior": str(Path(prior_path).resolve()),
            "prior_fingerprint": prior_fingerprint(prior),
            "rates": rates,
        }
    )
    offsets = np.cumsum([0] + [len(s) for s in streams]).astype(np.int64)
    with atomic_open(out, "wb") as handle:
        np.savez(
            handle,
            streams=np.concatenate(streams).astype(np.uint32),
            offsets=offsets,
            **slice_columns(dataset.records),
            meta=np.array(json.dumps(meta)),
        )
    rates["file_bits_per_pixel"] = out.stat().st_size * 8 / (len(streams) * rates["pixels_per_slice"])
    return rates


def decode_dataset(path: str | Path, prior_path: str | Path, out: str | Path) -> Path:
    """`prostate-vq decode`: an entropy-coded codes file -> the plain codes file `encode` writes."""
    from prostate_vq.prior.sample import load_prior

    path, out = Path(path), Path(out)
    if out.suffix != ".npz":
        raise UserInputError("the output must be an .npz file", out)
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
        meta = json.loads(str(stored["meta"]))
        words, offsets = stored["streams"], stored["offsets"]
    except (OSError, ValueError, KeyError) as error:
        raise UserInputError(f"not an entropy-coded codes file ({type(error).__name__})", path) from None
    prior, _, layout, _ = load_prior(prior_path, "cpu")
    if prior_fingerprint(prior) != meta.get("prior_fingerprint"):
        raise UserInputError(
            f"these codes were coded under another prior (weights differ); pass the one in the file's meta: {meta.get('prior')}",
            prior_path,
        )
    streams = [words[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    codes = decompress_codes(prior, streams, tuple(layout.grid), int(meta.get("chunk", CHUNK)))
    meta = {k: v for k, v in meta.items() if k not in ("coder", "chunk", "rates", "prior_fingerprint")}
    meta["codes_layout"] = "native indices of model.decode_indices"
    meta["decoded_from"] = str(path.resolve())
    columns = {key: stored[key] for key in ("files", "case", "week", "slice")}
    return write_codes(out, layout.to_model(codes).numpy(), columns, meta)
