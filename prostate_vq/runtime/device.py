"""Device choice, CPU threads and mixed precision: the knobs that make the same loop fast on CPU and GPU."""

from __future__ import annotations

import contextlib
import glob
import os

import torch

from prostate_vq.errors import UserInputError


def resolve_device(name: str | None) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserInputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (hyper-threads rarely help conv training)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS / Windows
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list"
        if not os.path.exists(path):
            path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        try:
            with open(path, encoding="utf-8") as handle:
                cores.add(handle.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores) if glob.glob("/sys/devices/system/cpu/cpu0/topology") else len(allowed))


def configure_cpu_threads(num_workers: int, world_size: int = 1) -> int:
    """Intra-op threads = physical cores left after the loader workers, shared by local ranks.

    An explicit OMP_NUM_THREADS (torchrun sets 1 for several processes) always wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = max(1, (physical_cores() - num_workers) // max(1, world_size))
    torch.set_num_threads(threads)
    return threads


PRECISION_ENV = "PROSTATE_VQ_PRECISION"  # auto (default), fp32, or bf16 (also on the CPU: the GPU check's dry run)


def autocast(device: torch.device):
    """bf16 autocast on CUDA where the GPU supports it; full fp32 elsewhere (CPU bf16 is slower for convs).
    PROSTATE_VQ_PRECISION=fp32 turns it off (to compare), =bf16 forces it (CPU included)."""
    precision = os.environ.get(PRECISION_ENV, "auto").lower()
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision not in ("auto", "fp32", "bf16"):
        raise UserInputError(f"{PRECISION_ENV}={precision!r}: use auto, fp32 or bf16")
    return contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
