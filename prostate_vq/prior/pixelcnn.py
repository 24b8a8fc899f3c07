"""Gated PixelCNN over code maps (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): a vertical stack (rows above) and a horizontal stack (left of the current position), gated
tanh x sigmoid units, and the vertical -> horizontal link that removes the blind spot of masked convs.

Written by hand: MONAI and vector-quantize-pytorch ship no PixelCNN. Causality is obtained by padding and
shifting (not by masking weights): the vertical stack at row ``i`` sees rows ``<= i`` and reaches the
horizontal stack shifted down by one row; the first horizontal layer sees columns ``< j`` only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prostate_vq.errors import UserInputError
from prostate_vq.prior.base import CodePrior


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks. ``first``: the horizontal conv excludes the current position."""

    def __init__(self, dim: int, kernel: int, first: bool):
        super().__init__()
        if kernel < 3 or kernel % 2 == 0:
            raise UserInputError(f"PixelCNN kernel must be odd and >= 3, got {kernel}")
        self.pad = kernel // 2
        self.first = first
        self.v_conv = nn.Conv2d(dim, 2 * dim, (self.pad + 1, kernel))
        self.v_to_h = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.h_conv = nn.Conv2d(dim, 2 * dim, (1, self.pad if first else self.pad + 1))
        self.h_out = nn.Conv2d(dim, dim, 1)

    def vertical(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_pre, v_down)``: row i of ``v_pre`` sees rows i-p..i, row i of ``v_down`` rows <= i-1 only."""
        p = self.pad
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))
        return v_pre, F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]

    def horizontal(self, h: torch.Tensor, link: torch.Tensor) -> torch.Tensor:
        """The horizontal stack given ``link = v_to_h(v_down)``; ``first``: columns < j, else <= j."""
        h_pre = self.h_conv(F.pad(h, (self.pad, 0, 0, 0)))[..., : h.shape[-1]]
        h_new = self.h_out(_gate(h_pre + link))
        return h_new if self.first else h + h_new

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre, v_down = self.vertical(v)
        return _gate(v_pre), self.horizontal(h, self.v_to_h(v_down))


class GatedPixelCNN(CodePrior):
    """Autoregressive prior over ``[B, h, w(, depth)]`` codes; works at any code-map size."""

    arch = "pixelcnn"

    def __init__(self, vocab_sizes: Sequence[int] | int, dim: int = 64, layers: int = 8, kernel: int = 3, first_kernel: int = 7):
        super().__init__(vocab_sizes, dim)
        if layers < 1:
            raise UserInputError(f"PixelCNN needs at least one layer, got {layers}")
        self.config = {
            "arch": self.arch,
            "vocab_sizes": list(self.vocab_sizes),
            "dim": dim,
            "layers": layers,
            "kernel": kernel,
            "first_kernel": first_kernel,
        }
        self.layers = nn.ModuleList(
            [GatedLayer(dim, first_kernel, first=True)] + [GatedLayer(dim, kernel, first=False) for _ in range(layers - 1)]
        )

    def gated_layers(self) -> Iterator[GatedLayer]:
        """``self.layers`` as the GatedLayers they are (a ModuleList yields plain Modules to a type checker)."""
        for layer in self.layers:
            if not isinstance(layer, GatedLayer):
                raise TypeError(f"PixelCNN layers are GatedLayers, not {type(layer).__name__}")
            yield layer

    @property
    def receptive_rows(self) -> int:
        """Rows above a position its output sees: the vertical stack's reach plus the one-row shift."""
        return 1 + sum(layer.pad for layer in self.gated_layers())

    def features(self, embedded: torch.Tensor) -> torch.Tensor:
        v = h = embedded
        for layer in self.layers:
            v, h = layer(v, h)
        return h

    def _fill(self, codes: torch.Tensor, choose) -> None:
        """Same distributions as ``CodePrior._fill`` but much cheaper: the vertical stack (rows above) is run
        once per row on the ``receptive_rows`` it can see, and only the one-row horizontal stack is re-run
        per position."""
        n, h, w = codes.shape[:3]
        for i in range(h):
            links = self._row_links(codes[:, max(0, i - self.receptive_rows) : i], n, w, codes.device)
            for j in range(w):
                x = self.embed_codes(codes[:, i : i + 1])  # [n, C, 1, w]; columns >= j are not seen
                for layer, link in zip(self.gated_layers(), links):
                    x = layer.horizontal(x, link)
                logits = self.head(x[..., j : j + 1])[:, :, 0, 0]
                codes[:, i, j] = choose(logits)

    def _row_links(self, above: torch.Tensor, n: int, w: int, device) -> list[torch.Tensor]:
        """Each layer's vertical contribution ``v_to_h(v_down)`` to the next row, from the rows ``above`` it."""
        links = []
        if above.shape[1] == 0:  # first row: nothing above (the zero padding of the full forward)
            zero = torch.zeros(n, 2 * self.dim, 1, w, device=device)
            return [layer.v_to_h(zero) for layer in self.gated_layers()]
        v = self.embed_codes(above)
        for layer in self.gated_layers():
            v_pre, _ = layer.vertical(v)
            links.append(layer.v_to_h(v_pre[:, :, -1:]))
            v = _gate(v_pre)
        return links
