"""What the machine can do, and settings that depend on it: native bf16 on a CPU, compiling a backbone.

Examples:
    >>> from advcl_plugin._platform import cpu_has_native_bf16
    >>> isinstance(cpu_has_native_bf16(), bool)
    True
"""

from __future__ import annotations

import torch

__all__ = ["COMPILE_RECOMPILE_LIMIT", "compile_backbone", "cpu_has_native_bf16"]

#: graphs a compiled backbone may build per code object before dynamo falls back to eager; AdvCL's step builds
#: five (the BN routes normal / pgd / pgd_ce, with and without input gradients) and a sixth in eval mode
COMPILE_RECOMPILE_LIMIT = 16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: avx512_bf16 or AMX); without it, bf16
    autocast is emulated and much slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def compile_backbone(backbone: torch.nn.Module, **options: object) -> None:
    """``backbone.compile(**options)`` with dynamo's recompile limit raised to :data:`COMPILE_RECOMPILE_LIMIT`
    (the default 8 leaves two graphs of headroom; past it dynamo silently runs the backbone uncompiled)."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), COMPILE_RECOMPILE_LIMIT))
    backbone.compile(**options)  # type: ignore[arg-type]
