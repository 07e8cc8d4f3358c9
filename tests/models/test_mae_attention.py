"""MAE attention kernels (fused SDPA and the math path), determinism, functional calls, Hessian-vector
products and a training step (tiny ViT, real EuroSAT pixels)."""

from __future__ import annotations

import torch
from timm.layers import Attention
from torch.nn.attention import SDPBackend, sdpa_kernel

from rsmae.models import fused_attention_pays, set_fused_attention
from tests.models.mae_helpers import fixed_noise, make_mae

# ---------------------------------------------------------------- attention, functional, HVP


def test_attention_uses_fused_sdpa(tiles, monkeypatch):
    model = make_mae()
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == 3 and all(a.fused_attn for a in attns)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model(tiles, noise=fixed_noise(model, 4))
    assert len(calls) == 3


def test_math_attention_switch_gives_the_same_loss_and_gradients(tiles, monkeypatch):
    model = make_mae().double()
    x, noise = tiles.double(), fixed_noise(model, 4).double()
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = model(x, noise=noise).loss
    fused_grads = torch.autograd.grad(fused, trainable, allow_unused=True)
    assert set_fused_attention(model, False) == 3  # 2 encoder blocks + 1 decoder block
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1))
    plain = model(x, noise=noise).loss
    plain_grads = torch.autograd.grad(plain, trainable, allow_unused=True)
    assert not calls
    torch.testing.assert_close(plain, fused)
    for a, b in zip(plain_grads, fused_grads, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b)
    assert fused_attention_pays("cuda") and not fused_attention_pays("cpu")


def test_deterministic_with_explicit_noise(tiles):
    model = make_mae()
    noise = fixed_noise(model, 4)
    a, b = model(tiles, noise=noise).loss, model(tiles, noise=noise).loss
    assert a.item() == b.item()
    assert model(tiles, noise=fixed_noise(model, 4, seed=1)).loss.item() != a.item()


def test_functional_call_matches_and_leaves_module_alone(tiles):
    model = make_mae()
    noise = fixed_noise(model, 4)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = torch.func.functional_call(model, params, (tiles,), {"noise": noise}).loss
    torch.testing.assert_close(loss, model(tiles, noise=noise).loss)
    shifted = {k: v + 0.05 * torch.randn_like(v) for k, v in params.items()}
    loss2 = torch.func.functional_call(model, shifted, (tiles,), {"noise": noise}).loss
    assert not torch.isclose(loss2, loss)
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k


def test_hessian_vector_product_under_math_kernel(tiles):
    model = make_mae().double()
    x, noise = tiles[:2].double(), fixed_noise(model, 2).double()
    theta = {k: p.detach() for k, p in model.named_parameters()}
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    torch.manual_seed(1)
    v = [torch.randn_like(theta[k]) for k in names]

    def grad_at(step, create_graph=False):
        free = [(theta[k] + step * vk).requires_grad_() for k, vk in zip(names, v, strict=True)]
        params = {**theta, **dict(zip(names, free, strict=True))}
        loss = torch.func.functional_call(model, params, (x,), {"noise": noise}).loss
        return free, torch.autograd.grad(loss, free, create_graph=create_graph)

    def dot(a, b):
        return sum((ai * bi).sum() for ai, bi in zip(a, b, strict=True))

    eps = 1e-7  # the loss is far from quadratic along a random v: keep eps small
    with sdpa_kernel(SDPBackend.MATH):
        free, g = grad_at(0.0, create_graph=True)
        vhv = dot(torch.autograd.grad(dot(g, v), free), v)
        fd = dot([(a - b) / (2 * eps) for a, b in zip(grad_at(eps)[1], grad_at(-eps)[1], strict=True)], v)
    assert torch.isfinite(vhv)
    torch.testing.assert_close(vhv, fd, rtol=1e-4, atol=1e-6)


def test_gradient_step_lowers_loss(tiles):
    model = make_mae()
    noise = fixed_noise(model, 4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = model(tiles, noise=noise).loss
    for _ in range(5):
        opt.zero_grad()
        loss = model(tiles, noise=noise).loss
        loss.backward()
        opt.step()
    assert model(tiles, noise=noise).loss.item() < 0.95 * first.item()
    assert model.encoder.pos_embed.grad is None  # fixed sin-cos table stays fixed
