"""oneDNN fp32 linears: same values as the stock path, autograd untouched, the module still a Linear."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.models.cpu_linear import OneDNNLinear, onednn_available, use_onednn_linears

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.SiLU(), nn.Linear(96, 32, bias=False))


def test_switched_model_computes_what_the_stock_one_does():
    stock = _mlp()
    fast = copy.deepcopy(stock)
    assert use_onednn_linears(fast) == 2
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        expected, got = stock(x), fast(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert all(isinstance(m, nn.Linear) for m in (fast[0], fast[2])) and type(fast[0]) is OneDNNLinear
    assert fast.state_dict().keys() == stock.state_dict().keys()


def test_training_gradients_match_the_stock_path():
    stock = _mlp()
    fast = copy.deepcopy(stock)
    use_onednn_linears(fast)
    x = torch.randn(2, 5, 64)
    x_stock, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    stock(x_stock).square().sum().backward()
    fast(x_fast).square().sum().backward()
    assert torch.allclose(x_fast.grad, x_stock.grad, rtol=1e-4, atol=1e-5)
    for a, b in zip(stock.parameters(), fast.parameters()):
        assert torch.allclose(b.grad, a.grad, rtol=1e-4, atol=1e-5)
    # A frozen layer still passes the gradient back to its input, and computes no weight gradient.
    for p in fast.parameters():
        p.requires_grad_(False)
        p.grad = None
    x = torch.randn(5, 64, requires_grad=True)
    fast(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in fast.parameters())


def test_autocast_keeps_the_stock_path():
    fast = _mlp()
    use_onednn_linears(fast)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(torch.randn(3, 64)).dtype == torch.bfloat16


def test_other_dtypes_and_copies():
    fast = _mlp()
    use_onednn_linears(fast)
    half = copy.deepcopy(fast).to(torch.bfloat16)
    with torch.no_grad():
        assert half(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
    clone = copy.deepcopy(fast)
    assert type(clone[0]) is OneDNNLinear
