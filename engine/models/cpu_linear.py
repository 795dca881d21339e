"""fp32 linear layers on the CPU through oneDNN instead of MKL, where no gradient is needed.

PyTorch's CPU wheel sends an fp32 ``nn.Linear`` to MKL's sgemm. On AMD CPUs MKL does not take its
AVX-512 path, and oneDNN (also in the wheel) runs the same fp32 GEMM about twice as fast: on the
2-core AMD EPYC VM the project is measured on, SmolLM2-135M's MLP GEMM (2,160 x 576 x 1,536) runs at
217 GFLOPS through MKL and 456 through oneDNN, its LM head (309 x 576 x 49,152) at 166 and 289.
Both are fp32 with fp32 accumulation; they differ only in summation order (relative 1e-6).

``use_onednn_linears`` swaps the class of a model's ``nn.Linear`` modules (state dict, ``isinstance``
and saving stay as they were). A forward that autograd must see (training) keeps the stock path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def onednn_available() -> bool:
    return _op is not None


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` whose no-grad fp32 CPU forward runs through oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        ):
            return _op(x, weight, self.bias, "none", [], "")
        return F.linear(x, weight, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Route the model's fp32 CPU linears through oneDNN; returns how many were switched."""
    if _op is None:
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
            switched += 1
    return switched
