"""Which device and precision a process runs on, and what it needs on CUDA (checked before any work).

One home for the device rules: a ``--device`` value becomes a ``torch.device`` only when this machine has
it (:func:`resolve_device`), an unset precision becomes the device's default (:func:`default_precision`:
fp32 on CPU, ``amp`` on CUDA when the GPU computes bf16 natively, else fp32), CUDA gets its determinism
settings once (:func:`configure_cuda`), and chunk sizes follow the free GPU memory (:func:`memory_budget`).
"""

from __future__ import annotations

import os

import torch

from nemesis_analysis.choices import Precision
from nemesis_analysis.errors import ConfigError

CUBLAS_WORKSPACE = ":4096:8"  # what deterministic cuBLAS needs (set unless the user set it)
FREE_MEMORY_SHARE = 16  # chunk budgets take 1/16 of the free GPU memory (activations, the MLP's 4x, attention)


def cuda_count() -> int:
    """CUDA devices torch sees (0 without a usable driver or a CUDA build)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or "auto": CUDA when available, else CPU; "cuda:N" only when this machine has GPU N.

    Raises a one-line ConfigError for a device this machine does not have, so a bad ``--device`` fails
    before any model is loaded. A CUDA device gets :func:`configure_cuda` first.
    """
    if device in (None, "auto"):
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
        if resolved.type not in ("cpu", "cuda"):
            raise ConfigError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
        check_cuda_device(resolved, str(device))
    if resolved.type == "cuda":
        configure_cuda()
    return resolved


def check_cuda_device(device: torch.device, requested: str) -> None:
    """A one-line ConfigError unless this machine has the CUDA device ``device`` (no-op for CPU)."""
    if device.type != "cuda":
        return
    count = cuda_count()
    if count == 0:
        raise ConfigError(f"device {requested!r} requested but no CUDA device is visible to torch; use --device cpu")
    if device.index is not None and device.index >= count:
        visible = ", ".join(f"cuda:{i}" for i in range(count))
        raise ConfigError(f"device {requested!r} requested but this machine has {count} CUDA device(s) ({visible})")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA compute capability 8.0 or newer (Ampere on); CPU yes."""
    if device.type != "cuda":
        return True
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def default_precision(device: torch.device) -> Precision:
    """fp32 on CPU; ``amp`` (bf16 autocast) on CUDA, or fp32 on GPUs without native bf16 (e.g. T4, V100)."""
    if device.type == "cuda" and native_bf16(device):
        return Precision.AMP
    return Precision.FP32


def resolve_precision(precision: Precision | str | None, device: torch.device) -> Precision:
    """The precision a run uses on ``device``: the one asked for, else :func:`default_precision`.

    Refuses what the device cannot run: fp16 off CUDA, ``amp`` on a GPU without native bf16.
    """
    if precision is None:
        return default_precision(device)
    precision = Precision(getattr(precision, "value", precision))
    if precision == Precision.FP16 and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use --precision amp (bf16 autocast) or fp32 on CPU")
    if precision == Precision.AMP and not native_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"--precision amp is bf16 autocast, which {name} does not compute natively; use fp32 or fp16")
    return precision


def resolve_run_config(config, device: torch.device):
    """``config.resolved(device.type)`` with an unset precision filled in by :func:`default_precision`,
    so training, sweeps and the session's model cache agree on one precision (and one run id)."""
    import dataclasses

    return dataclasses.replace(config, precision=resolve_precision(config.precision, device)).resolved(device.type)


_configured = False


def configure_cuda() -> None:
    """Once per process: deterministic cuBLAS workspaces and deterministic algorithms where torch has them
    (``warn_only``: kernels without a deterministic version, e.g. some attention backward passes, warn once
    instead of failing). Exact resume on CUDA holds up to those kernels."""
    global _configured
    if _configured:
        return
    _configured = True
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)


def memory_budget(device: torch.device, cpu_budget: int) -> int:
    """Floats one chunk may hold: ``cpu_budget`` on CPU; on CUDA 1/:data:`FREE_MEMORY_SHARE` of the free memory
    (in fp32 floats), never below ``cpu_budget``."""
    if device.type != "cuda":
        return int(cpu_budget)
    free, _ = torch.cuda.mem_get_info(device)
    return max(int(cpu_budget), int(free) // 4 // FREE_MEMORY_SHARE)


def host_features(features: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Large per-image features (PLOT's local features) kept on the host: pinned when ``device`` is CUDA, so
    the chunks that scoring moves (:func:`chunk_to`) copy asynchronously; unchanged on CPU."""
    if features is None:
        return None
    features = features.cpu()
    return features.pin_memory() if device.type == "cuda" and torch.cuda.is_available() else features


def chunk_to(features: torch.Tensor, start: int, stop: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``[start, stop)`` of host (or device) ``features`` on ``device`` in ``dtype``: only the chunk moves."""
    return features[start:stop].to(device=device, dtype=dtype, non_blocking=True)
