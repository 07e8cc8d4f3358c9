"""Loss landscapes: directions, deterministic objectives, surfaces (vmap, cache, resume), Hessian, noise.

Models are the tiny ``vit_test`` ViT; data are real EuroSAT tiles (``tiles``: 4 standardised 13-band
crops of 32 px; ``probe_data``: 40 labelled crops). The known-Hessian test uses a quadratic loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsmae.datasets import EuroSAT
from rsmae.errors import LandscapeError
from rsmae.landscape import (
    ClassificationObjective,
    MAEObjective,
    Objective,
    ProbeObjective,
    RCMAEObjective,
    Surface,
    compute_surface,
    dask_map,
    filter_normalize,
    grid,
    hutchinson_trace,
    interpolate_models,
    model_direction,
    noise_flatness,
    random_direction,
    top_eigenvalues,
    trainable_params,
)
from rsmae.landscape.hessian import HessianOperator
from rsmae.models import RCMAE, create_encoder
from rsmae.tasks import extract_features
from tests.conftest import EUROSAT
from tests.models.mae_helpers import fixed_noise, make_mae


@pytest.fixture(scope="module")
def probe_data() -> tuple[torch.Tensor, torch.Tensor]:
    """40 real EuroSAT training images (4 per class), standardised per band, cropped to 32 px."""
    ds = EuroSAT(EUROSAT, "train")
    images, labels = ds.tensors()
    keep = torch.cat([torch.nonzero(labels == c)[:4, 0] for c in range(len(ds.classes))])
    x = images[keep][..., :32, :32]
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / std, labels[keep]


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


# ------------------------------------------------------------------ directions
def test_filter_normalised_direction_matches_filter_norms() -> None:
    mae = make_mae()
    params = trainable_params(mae)
    assert "encoder.pos_embed" not in params  # the fixed sin-cos table is never perturbed
    d = random_direction(params, seed=0)
    assert set(d) == set(params)
    for name, t in d.items():
        if t.ndim <= 1:
            assert not t.any(), f"{name}: 1-D parameters get a zero direction by default"
        else:
            torch.testing.assert_close(_filter_norms(t), _filter_norms(params[name]), rtol=1e-5, atol=1e-6)
    d1 = random_direction(params, seed=0, include_1d=True)
    bias = "encoder.blocks.0.attn.qkv.bias"
    torch.testing.assert_close(d1[bias].norm(), params[bias].norm())
    torch.testing.assert_close(d1["decoder_pred.weight"], d["decoder_pred.weight"])  # same draw
    d2 = random_direction(params, seed=1)
    assert not torch.allclose(d2["decoder_pred.weight"], d["decoder_pred.weight"])
    # draws are keyed by name: the encoder part equals the direction of the encoder weights alone
    # (as the probe objective names them), whatever else the dict holds
    d_enc = random_direction({k: v for k, v in params.items() if k.startswith("encoder.")}, seed=0)
    for k, v in d_enc.items():
        torch.testing.assert_close(v, d[k])
    with pytest.raises(LandscapeError, match="names differ"):
        filter_normalize({"x": torch.ones(2, 2)}, params)


def test_straight_line_between_models_reaches_both(tiles: torch.Tensor) -> None:
    mae_a = make_mae()
    torch.manual_seed(1)
    mae_b = make_mae()
    with torch.no_grad():
        for p in mae_b.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    obj_a = MAEObjective(mae_a, tiles, seed=3)
    obj_b = MAEObjective(mae_b, tiles, seed=3)
    line = interpolate_models(obj_a, obj_b.params, np.array([0.0, 0.5, 1.0]), chunk_size=3)
    assert line.ys is None and line.values.shape == (3,)
    torch.testing.assert_close(line.values[0], float(obj_a(obj_a.params)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(line.values[2], float(obj_b(obj_b.params)), rtol=1e-5, atol=1e-6)
    d = model_direction(obj_a.params, obj_b.params)
    assert d["encoder.blocks.0.norm1.bias"].any()  # the line moves 1-D parameters too


# ------------------------------------------------------------------ objectives
def test_fixed_mask_loss_is_deterministic_and_model_untouched(tiles: torch.Tensor) -> None:
    mae = make_mae().train()
    before = {k: v.clone() for k, v in mae.state_dict().items()}
    fused = [m.fused_attn for m in mae.modules() if hasattr(m, "fused_attn")]
    obj = MAEObjective(mae, tiles, seed=5)
    first, second = obj(obj.params), obj(obj.params)
    assert float(first) == float(second)
    assert float(MAEObjective(mae, tiles, seed=5)(obj.params)) == float(first)
    assert float(MAEObjective(mae, tiles, seed=6)(obj.params)) != float(first)
    with torch.no_grad():
        expected = mae.eval()(tiles, noise=fixed_noise(mae, len(tiles), seed=5)).loss
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in mae.state_dict().items())
    assert [m.fused_attn for m in mae.modules() if hasattr(m, "fused_attn")] == fused


def test_rcmae_objective_centre_equals_forward_and_keeps_teacher(tiles: torch.Tensor) -> None:
    rc = RCMAE(make_mae(), consistency_weight=0.5)
    with torch.no_grad():  # a teacher that differs from its student
        for p in rc.student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    obj = RCMAEObjective(rc, tiles, seed=2, batch_size=2)
    assert not any(n.startswith("teacher") for n in obj.params)
    with torch.no_grad():
        rc.eval()
        gen = torch.Generator().manual_seed(2)
        expected = sum(rc(x, noise=rc.student.make_noise(2, generator=gen)).loss for x in tiles.split(2)) / 2
    torch.testing.assert_close(obj(obj.params), expected, rtol=1e-5, atol=1e-6)
    recon = MAEObjective(rc, tiles, seed=2, batch_size=2)  # the student's reconstruction term only
    assert float(recon(recon.params)) < float(obj(obj.params))


def test_probe_objective_fixed_head_and_vmap(probe_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = probe_data
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    obj = ProbeObjective(enc, images, labels, steps=100, batch_size=20)
    feats = extract_features(enc, images)
    with torch.no_grad():
        expected = F.cross_entropy(obj.head(feats), labels)
    torch.testing.assert_close(obj(obj.params), expected, rtol=1e-4, atol=1e-5)
    assert obj.train_accuracy > 0.3  # the head learned something from 40 real images, 10 classes
    assert set(obj.params) == {f"encoder.{k}" for k, _ in enc.named_parameters() if _.requires_grad}
    d = random_direction(obj.params, 0)
    values = [compute_surface(obj, [d], grid(4), chunk_size=c).values for c in (4, 1)]
    torch.testing.assert_close(values[0], values[1], rtol=1e-4, atol=1e-5)


def test_classification_objective_centre(probe_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = probe_data
    torch.manual_seed(0)
    model = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8, num_classes=10)
    obj = ClassificationObjective(model, images, labels, batch_size=16)
    assert "head.weight" in obj.params
    with torch.no_grad():
        expected = F.cross_entropy(model.eval()(images), labels)
    torch.testing.assert_close(obj(obj.params), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ surfaces
def _mae_surface_parts(tiles: torch.Tensor) -> tuple[MAEObjective, list[dict[str, torch.Tensor]]]:
    obj = MAEObjective(make_mae(), tiles[:2], seed=0)
    return obj, [random_direction(obj.params, s) for s in (0, 1)]


def test_surface_centre_equals_model_loss_and_vmap_equals_loop(tiles: torch.Tensor, tmp_path: Path) -> None:
    obj, dirs = _mae_surface_parts(tiles)
    xs = grid(3)
    batched = compute_surface(obj, dirs, xs, xs, chunk_size=3, config={"model": "test"})
    loop = compute_surface(obj, dirs, xs, xs, chunk_size=1)
    assert batched.values.shape == (3, 3)
    torch.testing.assert_close(batched.values, loop.values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.centre, float(obj(obj.params)), rtol=1e-5, atol=1e-6)
    assert np.ptp(batched.values) > 1e-3  # the grid actually moved the weights
    saved = Surface.load(batched.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(saved.values, batched.values)
    assert saved.config["model"] == "test" and saved.config["objective"]["objective"] == "mae"


class _Killed(RuntimeError):
    pass


def test_resumed_grid_equals_uninterrupted(tiles: torch.Tensor, tmp_path: Path) -> None:
    obj, dirs = _mae_surface_parts(tiles)
    xs = grid(4)
    full = compute_surface(obj, dirs, xs, xs, chunk_size=4)

    def dies_after_two(fn, items):  # noqa: ANN001, ANN202
        for i, item in enumerate(items):
            if i == 2:
                raise _Killed("killed")
            yield fn(item)

    with pytest.raises(_Killed):
        compute_surface(obj, dirs, xs, xs, chunk_size=4, cache_dir=tmp_path, map_fn=dies_after_two)
    (rows_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(list(rows_dir.glob("row_*.npy"))) == 2
    (rows_dir / "row_0003.npy").write_bytes(b"truncated")  # a half-written file is recomputed
    computed = []

    def counting(fn, items):  # noqa: ANN001, ANN202
        computed.extend(items)
        return map(fn, items)

    resumed = compute_surface(obj, dirs, xs, xs, chunk_size=4, cache_dir=tmp_path, map_fn=counting)
    assert computed == [float(y) for y in xs[2:]]
    torch.testing.assert_close(resumed.values, full.values, rtol=1e-6, atol=1e-7)
    again = compute_surface(obj, dirs, xs, xs, cache_dir=tmp_path, map_fn=counting)  # all cached
    assert len(computed) == 2 and again.config["key"] == resumed.config["key"]
    other = MAEObjective(make_mae(), tiles[:2], seed=1)  # other masks: another cache key
    assert compute_surface(other, dirs, xs[:2], xs[:1]).config["key"] != resumed.config["key"]
    with pytest.raises(LandscapeError, match="directions"):
        compute_surface(obj, dirs[:1], xs, xs)


def test_dask_rows_equal_local(tiles: torch.Tensor) -> None:
    distributed = pytest.importorskip("distributed")
    obj, dirs = _mae_surface_parts(tiles)
    xs = grid(3)
    local = compute_surface(obj, dirs, xs, xs, chunk_size=3)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=None) as client:
        remote = compute_surface(obj, dirs, xs, xs, chunk_size=3, map_fn=dask_map(client))
    torch.testing.assert_close(remote.values, local.values, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ Hessian
def test_hvp_matches_finite_differences(tiles: torch.Tensor) -> None:
    obj = MAEObjective(make_mae(), tiles[:2, :, :16, :16].repeat(1, 1, 2, 2), seed=0,
                       dtype=torch.float64)
    op = HessianOperator(obj)
    v = op.like("gaussian", torch.Generator().manual_seed(0))
    norm = math.sqrt(sum(float(t.square().sum()) for t in v.values()))
    v = {n: t / norm for n, t in v.items()}  # a unit vector: central differences are O(eps^2)
    hv = op(v)

    def grad_at(eps: float) -> list[torch.Tensor]:
        p = {n: (t + eps * v[n]).requires_grad_(True) for n, t in obj.params.items()}
        return torch.autograd.grad(obj(p), list(p.values()), allow_unused=True, materialize_grads=True)

    eps = 1e-4
    fd = [(a - b) / (2 * eps) for a, b in zip(grad_at(eps), grad_at(-eps), strict=True)]
    got = torch.cat([hv[n].reshape(-1) for n in obj.params])
    want = torch.cat([g.reshape(-1) for g in fd])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7 * float(want.abs().max()))
    assert float(got.norm()) > 0


class _Quadratic(Objective):
    """``0.5 theta^T A theta`` over a (3, 2) weight and a (2,) bias: Hessian A."""

    name = "quadratic"

    def __init__(self, a: torch.Tensor) -> None:
        module = nn.Linear(3, 2).double()
        super().__init__(module)
        self.a = a

    def loss(self, params):  # noqa: ANN001, ANN201
        theta = torch.cat([params["weight"].reshape(-1), params["bias"]])
        return 0.5 * theta @ self.a @ theta


def test_top_eigenvalues_and_trace_of_a_known_hessian() -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    eig = torch.tensor([6.0, -4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.0], dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T
    obj = _Quadratic(a)
    for method in ("subspace", "deflation"):
        result = top_eigenvalues(obj, k=3, iters=500, tol=1e-10, seed=1, method=method)
        values = torch.tensor(result.values, dtype=torch.float64)
        torch.testing.assert_close(values, eig[:3], rtol=1e-6, atol=1e-6)
        assert all(result.converged) and len(result.history[0]) > 2
        for u, i in zip(result.vectors, range(3), strict=True):  # the eigenvectors, up to sign
            vec = torch.cat([u["weight"].reshape(-1), u["bias"]])
            assert abs(float(vec @ q[:, i])) == pytest.approx(1.0, abs=1e-5)
    close = q @ torch.diag(torch.tensor([5.0, 4.9, 1, 1, 1, 1, 1, 1], dtype=torch.float64)) @ q.T
    clustered = top_eigenvalues(_Quadratic(close), k=2, iters=40, tol=1e-4, seed=0)
    assert clustered.values[0] >= clustered.values[1]  # a close pair comes out in order
    assert clustered.values == pytest.approx([5.0, 4.9], abs=1e-3)
    trace = hutchinson_trace(obj, samples=2000, seed=0)
    true = float(eig.sum())
    assert abs(trace.trace - true) < 4 * trace.std_err and trace.std_err < 0.25
    assert len(trace.history) == 2000 and trace.history[-1] == trace.trace
    early = hutchinson_trace(obj, samples=2000, seed=0, tol=0.1)
    assert 10 <= len(early.estimates) < 2000


# ------------------------------------------------------------------ noise
def test_noise_sigma_zero_gives_base_loss(tiles: torch.Tensor) -> None:
    obj = MAEObjective(make_mae(), tiles[:2], seed=0)
    result = noise_flatness(obj, [0.0, 0.05, 0.2], draws=20, seed=0, chunk_size=12)
    assert result.increases.shape == (3, 20)
    again = noise_flatness(obj, [0.0, 0.2], draws=3, seed=0, use_vmap=False)  # the same draws, one by one
    np.testing.assert_allclose(again.increases, result.increases[[0, 2], :3], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.base, float(obj(obj.params)))
    np.testing.assert_allclose(result.increases[0], 0.0, atol=1e-5)
    assert result.std[2] > 0 and math.isfinite(result.mean[2])
    assert result.to_dict()["mean"][0] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(LandscapeError):
        noise_flatness(obj, [-0.1], draws=2)


class _DataDependent(_Quadratic):
    """A loss with Python control flow on a tensor value: ``vmap`` cannot batch it."""

    def loss(self, params):  # noqa: ANN001, ANN201
        value = super().loss(params)
        return value if float(value) >= 0 else -value


def test_points_fall_back_to_a_loop_when_vmap_fails(caplog: pytest.LogCaptureFixture) -> None:
    obj = _DataDependent(torch.eye(8, dtype=torch.float64))
    d = random_direction(obj.params, 0)
    with caplog.at_level("WARNING", logger="rsmae.landscape.surface"):
        curve = compute_surface(obj, [d], grid(5), chunk_size=5)
    assert "vmap failed" in caplog.text
    expected = [float(obj({n: t + float(a) * d[n] for n, t in obj.params.items()})) for a in grid(5)]
    torch.testing.assert_close(curve.values, np.array(expected))
