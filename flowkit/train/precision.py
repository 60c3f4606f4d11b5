"""bfloat16 training: where the hardware supports it, and the autocast context the trainers use.

Under ``bf16=True`` the trainers run the loss in ``torch.autocast(device, torch.bfloat16)``: the
conditioners' matrix products run in bfloat16, while the bijectors take their parameters back to
the data's float32 (``MaskedAutoregressive`` and ``Coupling`` cast the conditioner output to the
input's dtype), so transformers, log-dets, the base log-density and the loss stay float32, and the
weights and optimiser state stay float32 (autocast casts copies). bf16 pays only where the
hardware multiplies it natively: a GPU with bf16 tensor cores, or a CPU with AMX or AVX512-BF16.
Elsewhere oneDNN emulates it, slower than float32, so ``bf16=True`` is refused there rather than
silently slowing a fit down.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU has native bfloat16 matrix instructions, and a one-line reason.

    Example:
        >>> ok, reason = cpu_bf16_support()
        >>> isinstance(ok, bool) and isinstance(reason, str)
        True
    """
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    name = capabilities.get("cpu_name", "this CPU")
    if capabilities.get("amx_bf16") or capabilities.get("amx_tile"):
        return True, f"{name}: AMX bf16"
    if capabilities.get("avx512_bf16"):
        return True, f"{name}: AVX512-BF16"
    return False, f"{name} has neither AMX nor AVX512-BF16 (capability {torch.backends.cpu.get_cpu_capability()})"


def check_bf16(device: torch.device) -> None:
    """Raise ``ValueError`` with the reason when ``device`` cannot train in bf16 at speed."""
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError(f"bf16 training needs a GPU with bfloat16 support; {torch.cuda.get_device_name(device)} "
                             "has none: train without bf16")
        return
    if device.type != "cpu":
        raise ValueError(f"bf16 training is supported on CPU and CUDA, not on {device.type}")
    ok, reason = cpu_bf16_support()
    if not ok:
        raise ValueError(f"bf16 training needs native bfloat16 matrix instructions; {reason}, where bf16 "
                         "is emulated and slower than float32: train without bf16")


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()
