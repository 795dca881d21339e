"""fp32 linear layers on the CPU through oneDNN instead of MKL.

PyTorch's CPU wheel sends an fp32 ``nn.Linear`` to MKL's sgemm. On AMD CPUs MKL does not take its
AVX-512 path, and oneDNN (also in the wheel) runs the same fp32 GEMM about twice as fast: on the
2-core AMD EPYC VM the project is measured on, SmolLM2-135M's MLP GEMM (2,160 x 576 x 1,536) runs at
217 GFLOPS through MKL and 456 through oneDNN, its LM head (309 x 576 x 49,152) at 166 and 289.
Both are fp32 with fp32 accumulation; they differ only in summation order (relative 1e-6).

``use_onednn_linears`` swaps the class of a model's ``nn.Linear`` modules (state dict, ``isinstance``
and saving stay as they were). Training goes through a small autograd function whose backward
GEMMs run through oneDNN too; bf16/fp16, GPU tensors and CPU autocast keep the stock path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_op = (
    getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available()
    else None
)


def onednn_available() -> bool:
    return _op is not None


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b, and both backward GEMMs (dx = dy W, dW = dy^T x), through oneDNN.

    The transposes are views: oneDNN reads strided operands directly (measured 2-4x faster than
    MKL's ``mm`` on the backward shapes of SmolLM2's layers, 1,024 tokens)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # A frozen layer (no weight gradient) needs only W for dx: keeping x too would hold every
        # frozen layer's activations until the backward, as the stock linear does not.
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.has_bias = bias is not None
        return _op(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = _op(grad, weight.t(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            grad_weight = _op(rows.t(), x.reshape(-1, x.shape[-1]).t(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_bias


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` whose fp32 CPU forward (and backward) runs through oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or weight.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
        ):
            return F.linear(x, weight, self.bias)
        if torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        ):
            return _OneDNNLinearFunction.apply(x, weight, self.bias)
        return _op(x, weight, self.bias, "none", [], "")


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
