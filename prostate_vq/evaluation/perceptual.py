"""LPIPS and FID from network weights the user supplies on disk: nothing is ever downloaded, and without the
weights the metrics are absent (not approximated by some other network).

* LPIPS (Zhang et al. 2018, v0.1, AlexNet): `--lpips-weights FILE`, the state dict of the `lpips` package's
  `lpips.LPIPS(net="alex")` (its keys: `net.slice1.0.weight` ..., `lin0.model.1.weight` ...,
  `scaling_layer.shift/scale`), as safetensors or a weights-only `torch.save`. The network is rebuilt here
  because the package fetches its AlexNet backbone through torchvision at run time. Grey slices in [0, 1]
  are repeated to 3 channels and mapped to [-1, 1], as `lpips` does with `normalize=True`.
* FID: `--fid-weights FILE`, a TorchScript feature network (e.g. an InceptionV3 or the RadImageNet
  ResNet50 MONAI's generative tutorials use, saved with `torch.jit.save`) taking `[B, 3, H, W]` in [0, 1]
  (grey repeated; the network does its own normalisation) and returning `[B, F]` or `[B, F, h, w]`
  (spatially averaged). TorchScript runs no pickled Python. The Fréchet distance is MONAI's formula
  (`FIDMetric`) computed with torch's symmetric eigendecomposition, because MONAI's takes the matrix square
  root from scipy, which prostate-vq does not depend on.
"""

from __future__ import annotations

import functools
import hashlib
import operator
from pathlib import Path

import torch
from torch import Tensor, nn

from prostate_vq.errors import UserInputError

_ALEX = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))


class _Lin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """lpips.LPIPS(net="alex", version="0.1") with the same module names, so its state dict loads as is."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = nn.Module()
        self.scaling_layer.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.scaling_layer.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.net = nn.Module()
        # torchvision's alexnet.features indices, as lpips slices them: conv at 0, 3, 6, 8, 10
        layout = ((0, None), (3, 2), (6, 5), (8, None), (10, None))
        for i, ((conv_at, pool_at), (cin, cout, k, s, p)) in enumerate(zip(layout, _ALEX), 1):
            block = nn.Sequential()
            if pool_at is not None:
                block.add_module(str(pool_at), nn.MaxPool2d(3, 2))
            block.add_module(str(conv_at), nn.Conv2d(cin, cout, k, s, p))
            block.add_module(str(conv_at + 1), nn.ReLU(inplace=False))
            setattr(self.net, f"slice{i}", block)
        for i, (_, cout, *_rest) in enumerate(_ALEX):
            setattr(self, f"lin{i}", _Lin(cout))

    def _features(self, x: Tensor) -> list[Tensor]:
        x = (x - self.scaling_layer.shift) / self.scaling_layer.scale
        out = []
        for i in range(1, 6):
            x = getattr(self.net, f"slice{i}")(x)
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance per pair of ``[B, 1 or 3, H, W]`` images in [0, 1]: ``[B]``."""
        a, b = (_rgb(t) * 2 - 1 for t in (a, b))
        layers = [
            getattr(self, f"lin{i}").model((fa - fb).pow(2)).mean(dim=(2, 3))
            for i, (fa, fb) in enumerate(zip(self._features(a), self._features(b)))
        ]
        total: Tensor = functools.reduce(operator.add, layers)
        return total.reshape(-1)


def _rgb(x: Tensor) -> Tensor:
    return x.float().clamp(0, 1).expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float().clamp(0, 1)


def weights_id(path: Path) -> dict:
    """What metrics.json records of a weights file: its name and sha256 (which network scored the numbers)."""
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lpips(path: str | Path, option: str = "--lpips-weights") -> LPIPS:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{option}: file not found (LPIPS weights are never downloaded)", path)
    try:
        state = _state(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        net = LPIPS()
        net.load_state_dict(state)
    except Exception as error:  # unreadable file, foreign pickle, wrong keys: one line, never a traceback
        raise UserInputError(
            f"{option}: not the state dict of lpips.LPIPS(net='alex') "
            f"({str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__})",
            path,
        ) from None
    return net.eval()


def load_feature_net(path: str | Path, option: str = "--fid-weights") -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{option}: file not found (FID feature networks are never downloaded)", path)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:  # not a TorchScript archive
        raise UserInputError(
            f"{option}: not a TorchScript feature network saved with torch.jit.save "
            f"({str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__})",
            path,
        ) from None


@torch.no_grad()
def features(net, images: Tensor, batch_size: int = 32) -> Tensor:
    """``[N, F]`` features of ``[N, 1, H, W]`` images in [0, 1] (spatial outputs are averaged)."""
    out = []
    for start in range(0, len(images), batch_size):
        f = net(_rgb(images[start : start + batch_size]))
        f = f[0] if isinstance(f, (tuple, list)) else f
        out.append((f.flatten(2).mean(2) if f.ndim > 2 else f).double().cpu())
    return torch.cat(out)


def frechet_distance(a: Tensor, b: Tensor) -> float | None:
    """FID between two feature sets ``[N, F]`` (None with fewer than two of either):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2), where tr((S_a S_b)^1/2) is the sum of the square
    roots of the eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric, so eigvalsh applies)."""
    if len(a) < 2 or len(b) < 2:
        return None
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)
