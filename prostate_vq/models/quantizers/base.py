"""The one quantizer interface every variant implements, plus shared codebook-health helpers."""

from __future__ import annotations

import contextlib
import functools
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prostate_vq.models.code_stats import code_counts, perplexity, usage
from prostate_vq.models.rate import CodeLevel

# The ceiling of every codebook size: far above any sensible model (2**21 codes would allocate gigabytes and
# train as if fine).
CODEBOOK_SIZE = {"minimum": 1, "maximum": 2**20}


class QuantizerOutput(NamedTuple):
    """`quantized` [B, C, h, w] (straight-through in training), `indices` LongTensor code map,
    `losses` already-weighted scalars, `latents` the vectors the codebook sees [B, D_code, h, w].
    A NamedTuple (not a dataclass) so that torchinfo can report it."""

    quantized: Tensor
    indices: Tensor
    losses: dict[str, Tensor]
    latents: Tensor | None = None


def to_vectors(z: Tensor) -> Tensor:
    """[B, C, h, w] -> [B*h*w, C] (free when `z` is channels_last)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def to_map(vectors: Tensor, like: Tensor) -> Tensor:
    """[B*h*w, C] -> [B, C, h, w] with the batch and grid of `like`."""
    b, _, h, w = like.shape
    return vectors.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def nearest_code(z: Tensor, codebook: Tensor, max_elements: int = 1 << 22) -> Tensor:
    """Index of the nearest codebook row for each row of `z` ([N, D] vs [K, D]).

    Chunked so that no distance matrix larger than `max_elements` floats is ever held:
    argmin_k ||z - e_k||^2 = argmin_k (||e_k||^2 - 2 z.e_k), computed with one addmm per chunk
    (||z||^2 is constant per row and left out).
    """
    with torch.no_grad():
        z = z.float()
        codebook = codebook.float()
        e2 = codebook.pow(2).sum(1)
        rows = max(1, max_elements // max(1, codebook.shape[0]))
        if z.shape[0] <= rows:
            return torch.addmm(e2, z, codebook.t(), beta=1.0, alpha=-2.0).argmin(1)
        return torch.cat([torch.addmm(e2, chunk, codebook.t(), beta=1.0, alpha=-2.0).argmin(1) for chunk in z.split(rows)])


def entropy_loss(neg_distance: Tensor, temperature: float) -> Tensor:
    """Codebook entropy regulariser: low per-vector entropy, high batch-average entropy.

    `neg_distance` [N, K]; returns mean per-vector entropy minus entropy of the batch-mean assignment,
    so minimising it spreads the batch over many codes while each vector stays decisive.
    """
    logp = F.log_softmax(neg_distance / temperature, dim=1)
    p = logp.exp()
    per_vector = -(p * logp).sum(1).mean()
    mean_p = p.mean(0)
    batch = -(mean_p * torch.log(mean_p.clamp(min=1e-12))).sum()
    return per_vector - batch


@contextlib.contextmanager
def no_lazy_init(codebooks, active: bool):
    """vector-quantize-pytorch k-means-initialises a codebook on its first forward, even in eval mode;
    evaluation (`active`) must not change the model, so uninitialised codebooks pass through unchanged."""
    pending = [cb for cb in codebooks if active and not bool(cb.initted)]
    for cb in pending:
        cb.initted.fill_(1)  # an int, not True: torch.jit.trace has no fill_ overload for a Python bool
    try:
        yield
    finally:
        for cb in pending:
            cb.initted.fill_(0)


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Copy every buffer of `module` from rank 0 (no-op outside torch.distributed)."""
    if is_distributed():
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def full_precision(method):
    """Run a quantizer's `forward` or `lookup` in fp32 with autocast off, whatever the caller's precision: in
    bf16 (8 bits of mantissa) nearby distances tie, argmin picks other codes, and EMA statistics and
    rounding (FSQ) drift. Float inputs are cast to fp32; the quantized map goes back in the input's dtype
    (under autocast the decoder casts it again), losses and latents stay fp32."""

    @functools.wraps(method)
    def wrapper(self, x: Tensor, *args, **kwargs):
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            out = method(self, x.float() if x.is_floating_point() else x, *args, **kwargs)
        low = dtype if torch.is_floating_point(x) and dtype != torch.float32 else None
        if isinstance(out, QuantizerOutput):
            return out._replace(quantized=out.quantized.to(low)) if low is not None else out
        return out.to(low) if low is not None and isinstance(out, Tensor) else out

    wrapper.full_precision = True
    return wrapper


class Quantizer(nn.Module):
    """Base class: `forward(z [B, C, h, w]) -> QuantizerOutput`, `lookup(indices) -> quantized`.

    `num_codes` is every code the quantizer can emit (all levels together); `code_counts` turns an
    index map into LongTensor[num_codes]. Subclasses with dead-code restart add to `restarted`.
    Every subclass's `forward` and `lookup` compute in fp32 under autocast (`full_precision`).
    """

    codebook_size: int

    # What a kind says about itself (`register_quantizer` refuses a kind without the first three), so that no
    # other module keeps a list of kinds: the report's loss paragraph and references, docs/models.md's table,
    # the config check and ReFiT read these.
    kind: ClassVar[str] = ""  # set by register_quantizer
    summary: ClassVar[str] = ""  # what it does (docs/models.md)
    loss_text: ClassVar[str] = ""  # its loss terms, for the report's **Loss.** paragraph (no citation numbers)
    references: ClassVar[tuple[str, ...]] = ()  # citation keys, numbered by the report in order of first citation
    citations: ClassVar[dict[str, str]] = {}  # the full text of keys this kind introduces to the references
    implementation: ClassVar[str] = "hand-written"  # docs/models.md: where the arithmetic comes from
    # Ranges of the constructor keywords beyond their type (prostate_vq.schema.option_rules limits, e.g.
    # {"decay": {"maximum": 1}}); merged along the class hierarchy; a keyword whose default is None names its
    # `kind`. Checked when a config is resolved, before any data loads.
    option_limits: ClassVar[dict[str, dict]] = {}
    supports_refit: ClassVar[bool] = False  # one learned codebook ReFiT can re-build (`codebook`, `set_codebook`)
    loss_weights: ClassVar[tuple[str, ...]] = ()  # the options that weight its loss terms (the report names them)
    small_options: ClassVar[dict] = {}  # a tiny instance (a few codes) for tests and examples
    onnx_unsupported: ClassVar[str | None] = None  # why its graph cannot go to ONNX (export notes it), if it cannot

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("forward", "lookup"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "full_precision", False):
                setattr(cls, name, full_precision(method))

    def __init__(self) -> None:
        super().__init__()
        self.restarted = 0

    @property
    def num_codes(self) -> int:
        return self.codebook_size

    @property
    def cosine_codes(self) -> bool:
        """Whether codes are compared by angle (unit vectors); ReFiT's k-means follows it."""
        return False

    def code_counts(self, indices: Tensor) -> Tensor:
        return code_counts(indices, self.num_codes)

    def perplexity(self, indices: Tensor) -> float:
        return perplexity(self.code_counts(indices))

    def usage(self, indices: Tensor) -> float:
        return usage(self.code_counts(indices))

    def pop_restarted(self) -> int:
        """Dead codes restarted since the last call (for the training history)."""
        n, self.restarted = self.restarted, 0
        return n

    def index_shape(self, h: int, w: int) -> tuple[int, ...]:
        """Shape of one sample's index map for an h x w latent grid."""
        return (h, w)

    def code_levels(self, h: int, w: int, prefix: str = "") -> list[CodeLevel]:
        """The code maps this quantizer emits on an h x w grid (one level unless overridden)."""
        return [CodeLevel(prefix or "codes", (h, w), int(self.codebook_size))]

    def lookup(self, indices: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
