"""Tests for raywarp.noise: GP noise by random Fourier features and white-noise warping.

Statistical tests use fixed seeds (so they are deterministic) and tolerances of about
4 standard errors, where the standard error is measured across independent realizations
(seeds x channels), so it includes both feature sampling and spatial averaging error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raywarp import noise as N
from raywarp.noise import (
    GPFeatures,
    gp_features,
    gp_noise,
    pixel_grid,
    warp_coords,
    white_noise,
)


def const_flow(h, w, dx, dy, batch=1):
    f = torch.zeros(batch, 2, h, w)
    f[:, 0], f[:, 1] = dx, dy
    return f


def affine_flow(h, w, matrix, batch=1):
    """Backward flow of p -> c + A (p - c) (source point for target pixel p), c the centre."""
    g = pixel_grid(h, w).float()
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2]).view(1, 2, 1, 1)
    a = torch.tensor(matrix, dtype=torch.float32)
    rel = g - c
    src = torch.einsum("ij,bjhw->bihw", a, rel) + c
    return (src - g).expand(batch, 2, h, w).contiguous()


def rotation_flow(h, w, degrees, batch=1):
    t = math.radians(degrees)
    return affine_flow(h, w, [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], batch)


def zoom_flow(h, w, scale, batch=1):
    """scale < 1 magnifies frame t-1 (target pixels share source pixels); > 1 compresses."""
    return affine_flow(h, w, [[scale, 0.0], [0.0, scale]], batch)


def lag_cov(x, d):
    """Mean of x(p) x(p + d) over horizontal and vertical lags d; x (..., H, W)."""
    h, w = x.shape[-2:]
    a = (x[..., :, : w - d] * x[..., :, d:]).mean((-2, -1))
    b = (x[..., : h - d, :] * x[..., d:, :]).mean((-2, -1))
    return (a + b) / 2


def truncated_se_kernel(d, eps, cutoff):
    """Isotropic SE kernel whose spectrum N(0, eps^-2 I) is cut at |z| <= cutoff.

    k(d) = E[cos(<z, d>)] = E[J0(|z| |d|)], |z| Rayleigh(1/eps) restricted to [0, cutoff].
    """
    s = 1.0 / eps
    r = torch.linspace(0, cutoff, 20001, dtype=torch.float64)
    pdf = r / s**2 * torch.exp(-(r**2) / (2 * s**2))
    num = torch.trapezoid(torch.special.bessel_j0(r * d) * pdf, r)
    return float(num / torch.trapezoid(pdf, r))


# ----------------------------------------------------------------------------- GP


def test_gp_mean_and_variance():
    # 16 seeds x 4 channels = 64 realizations of the GP on a 32x32 grid (paper eps).
    means, variances = [], []
    for seed in range(16):
        x = gp_noise(gp_features(seed, 4), pixel_grid(32, 32))[0].double()
        means.append(x.mean((-2, -1)))
        variances.append((x**2).mean((-2, -1)))
    means, variances = torch.cat(means), torch.cat(variances)
    n = len(means)
    se_mean = means.std() / math.sqrt(n)
    se_var = variances.std() / math.sqrt(n)
    assert abs(means.mean()) < 4 * se_mean
    assert abs(variances.mean() - 1) < 4 * se_var
    assert se_var < 0.05  # the test has power: variance known to a few percent


@pytest.mark.parametrize("max_frequency", [float("inf"), None])
def test_gp_covariance_matches_kernel(max_frequency):
    # eps = 2 px so the lags 0..3 span the kernel. Correlation r(d) = cov(d) / cov(0) per
    # realization cancels most of the sum-of-w^2 fluctuation; the variance itself is
    # tested above. 6 seeds x 4 channels = 24 realizations; SE measured across them.
    eps, size = 2.0, 64
    corr = []
    for seed in range(6):
        f = gp_features(100 + seed, 4, num_features=3000, length_scale=eps,
                        max_frequency=max_frequency)
        x = gp_noise(f, pixel_grid(size, size))[0].double()
        cov = torch.stack([lag_cov(x, d) for d in range(4)], dim=1)
        corr.append(cov / cov[:, :1])
    corr = torch.cat(corr)
    est, se = corr.mean(0), corr.std(0) / math.sqrt(len(corr))
    for d in range(1, 4):
        if max_frequency is None:  # default cap min(2/eps, pi) = 1 rad/px: truncated SE
            assert f.max_frequency == pytest.approx(1.0)
            expected = truncated_se_kernel(d, eps, f.max_frequency)
        else:
            expected = math.exp(-(d**2) / (2 * eps**2))
        # 4 SE, plus 2e-3 for the small bias of a ratio estimator over a finite grid.
        assert abs(est[d] - expected) < 4 * se[d] + 2e-3, (d, est[d], expected, se[d])
        assert se[d] < 0.01


def test_default_cutoff_is_nyquist_for_paper_scale():
    # paper eps = 0.004977 * 128 = 0.637 px: 2 / eps = 3.14 ~ pi (Nyquist)
    f = gp_features(0, 1, length_scale=0.004977 * 128)
    assert f.max_frequency == pytest.approx(math.pi, rel=5e-3)
    f = gp_features(0, 1, length_scale=0.5)  # 2 / eps = 4 > pi: Nyquist cap applies
    assert f.max_frequency == pytest.approx(math.pi)
    assert f.z.norm(dim=-1).max() <= math.pi
    f = gp_features(0, 1, length_scale=4.0)
    assert f.max_frequency == pytest.approx(0.5)
    assert f.z.norm(dim=-1).max() <= 0.5
    f = gp_features(0, 1, length_scale=4.0, max_frequency=float("inf"))
    assert f.z.norm(dim=-1).max() > 0.5


def test_gp_integer_translation_equivariance():
    f = gp_features(3, 2)
    h, w, dx, dy = 37, 53, 5, -3
    g = pixel_grid(h, w)
    base = gp_noise(f, g)
    shift = torch.tensor([dx, dy], dtype=torch.float64).view(1, 2, 1, 1)
    moved = gp_noise(f, g + shift)
    # moved[y, x] = xi(x + dx, y + dy) = base[y + dy, x + dx]
    torch.testing.assert_close(moved[..., 3:, : w - 5], base[..., : h - 3, 5:], atol=1e-5, rtol=0)


def test_gp_matches_direct_formula_at_shifted_coordinates():
    f = gp_features(5, 3, num_features=500)
    coords = pixel_grid(9, 11) + torch.tensor([0.37, -12.81], dtype=torch.float64).view(1, 2, 1, 1)
    coords = coords + 1e4  # far from the origin: phases need float64
    got = gp_noise(f, coords)
    pts = coords[0].reshape(2, -1).T  # (P, 2)
    phase = torch.einsum("pk,cjk->cpj", pts, f.z) + f.b[:, None, :]
    ref = math.sqrt(2 / 500) * (torch.cos(phase) * f.w[:, None, :]).sum(-1)
    torch.testing.assert_close(got[0], ref.view(3, 9, 11).float(), atol=1e-5, rtol=0)


def test_gp_chunking_and_layout_do_not_change_values(monkeypatch):
    f = gp_features(7, 2, num_features=300)
    coords = pixel_grid(13, 17, batch=2) + torch.randn(2, 2, 13, 17, dtype=torch.float64)
    full = gp_noise(f, coords)
    monkeypatch.setattr(N, "_CHUNK_ELEMENTS", 2 * 300 * 7)  # 7 pixels per chunk
    torch.testing.assert_close(gp_noise(f, coords), full, atol=1e-6, rtol=0)
    flat = coords.permute(1, 0, 2, 3).reshape(1, 2, 1, -1)
    torch.testing.assert_close(gp_noise(f, flat).view(2, 2, 13, 17).transpose(0, 1), full,
                               atol=1e-6, rtol=0)
    out_np = gp_noise(f, coords.numpy())
    assert isinstance(out_np, np.ndarray) and out_np.shape == (2, 2, 13, 17)


def warped_gp_noise(features, flows, h, w):
    """GP noise of a clip whose frames are chained through backward `flows` (T−1, 2, h, w)."""
    coords = [pixel_grid(h, w)]
    for f in flows:
        coords.append(warp_coords(coords[-1], f[None]))
    return gp_noise(features, torch.cat(coords))


def test_warped_gp_integer_translation_is_a_shift():
    f = gp_features(11, 4)
    h, w, dx, dy, T = 37, 53, 2, 1, 3
    flows = const_flow(h, w, dx, dy, batch=T - 1)
    clip = warped_gp_noise(f, flows, h, w)
    assert clip.shape == (T, 4, h, w) and clip.dtype == torch.float32
    for t in range(1, T):
        # frame t pixel p came from p + t d in frame 0
        torch.testing.assert_close(clip[t, :, : h - t * dy, : w - t * dx],
                                   clip[0, :, t * dy:, t * dx:], atol=1e-5, rtol=0)


def test_warped_gp_fractional_translation_is_exact_everywhere():
    # Constant displacement: coordinates are exact beyond the frame too (no border clamp).
    f = gp_features(12, 1)
    h, w, d = 20, 24, torch.tensor([0.3, -1.7])
    clip = warped_gp_noise(f, const_flow(h, w, *d.tolist(), batch=3), h, w)
    g = pixel_grid(h, w)
    for t in range(4):
        ref = gp_noise(f, g + t * d.double().view(1, 2, 1, 1))
        torch.testing.assert_close(clip[t : t + 1], ref, atol=1e-5, rtol=0)


def test_warp_coords_chains_affine_flows_inside_the_frame():
    h = w = 41
    flow = rotation_flow(h, w, 5.0)
    c1 = warp_coords(pixel_grid(h, w), flow)
    torch.testing.assert_close(c1, pixel_grid(h, w) + flow.double(), atol=1e-6, rtol=0)
    c2 = warp_coords(c1, flow)
    ref = pixel_grid(h, w) + rotation_flow(h, w, 10.0).double()
    inner = slice(12, 29)  # points whose intermediate position stays inside the frame
    torch.testing.assert_close(c2[..., inner, inner], ref[..., inner, inner], atol=1e-4, rtol=0)


def test_gp_determinism():
    g = pixel_grid(16, 16)
    a = gp_noise(gp_features(1, 4), g)
    b = gp_noise(gp_features(1, 4), g)
    c = gp_noise(gp_features(2, 4), g)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.5
    # channels are independent samples, not copies
    assert (a[:, 0] - a[:, 1]).abs().max() > 0.5


@pytest.mark.parametrize("channels", [1, 4])
def test_gp_any_channels_odd_resolution(channels):
    f = gp_features(0, channels)
    assert isinstance(f, GPFeatures) and f.channels == channels and f.num_features == 3000
    x = gp_noise(f, pixel_grid(37, 53, batch=2))
    assert x.shape == (2, channels, 37, 53) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x[0], x[1])


def test_gp_bad_input():
    f = gp_features(0, 2, num_features=10)
    with pytest.raises(ValueError, match="length_scale"):
        gp_features(0, 2, length_scale=0.0)
    with pytest.raises(ValueError, match="length_scale"):
        gp_features(0, 2, length_scale=-1.0)
    with pytest.raises(ValueError, match="num_features"):
        gp_features(0, 2, num_features=0)
    with pytest.raises(ValueError, match="channels"):
        gp_features(0, 0)
    with pytest.raises(ValueError, match="seed"):
        gp_features(1.5, 2)
    with pytest.raises(ValueError, match="max_frequency"):
        gp_features(0, 2, max_frequency=0.0)
    with pytest.raises(ValueError, match="coords"):
        gp_noise(f, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="features"):
        gp_noise("not features", pixel_grid(4, 4))
    with pytest.raises(ValueError, match="flow"):
        warp_coords(pixel_grid(4, 4), torch.zeros(1, 3, 4, 4))
    nan_flow = torch.zeros(1, 2, 4, 4)
    nan_flow[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="flow"):
        warp_coords(pixel_grid(4, 4), nan_flow)


# --------------------------------------------------------------------- white noise


# Flows a Gaussian-preserving warp must keep N(0, 1) under: (name, flow(h, w, batch)).
WARPS = [
    ("fractional translation", lambda h, w, batch: const_flow(h, w, 0.37, -2.61, batch)),
    ("rotation 17 deg", lambda h, w, batch: rotation_flow(h, w, 17.0, batch)),
    ("zoom in x2 (magnify)", lambda h, w, batch: zoom_flow(h, w, 0.5, batch)),
    ("zoom out x2 (compress)", lambda h, w, batch: zoom_flow(h, w, 2.0, batch)),
]



def test_white_noise_is_seeded_and_refuses_empty_shapes():
    assert torch.equal(white_noise(3, (2, 4, 4)), white_noise(3, (2, 4, 4)))
    assert not torch.equal(white_noise(3, (2, 4, 4)), white_noise(4, (2, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        white_noise(0, (1, 0, 4))


# ------------------------------------------------------- white noise at GP coordinates


def coords_of(flow_fn, h=40, w=40):
    """GP coordinates of a frame one backward-flow step from the pixel grid, far from
    the plane's origin (negative tiles included)."""
    return warp_coords(pixel_grid(h, w), flow_fn(h, w, 1).double()) + torch.tensor([-130.3, 57.9], dtype=torch.float64).view(1, 2, 1, 1)


@pytest.mark.parametrize("name,flow_fn", WARPS)
def test_white_noise_at_coordinates_is_standard_normal_per_pixel(name, flow_fn):
    # Over 200 seeds each pixel's values: mean 0 (SE 0.07), second moment 1 (SE 0.1).
    coords = coords_of(flow_fn)
    samples = torch.cat([N.white_noise_at(seed, 2, coords) for seed in range(200)]).double()
    assert abs(float(samples.mean())) < 0.02, name
    assert abs(float(samples.square().mean()) - 1) < 0.03, name
    per_pixel = samples.square().mean((0, 1))
    assert float((per_pixel - 1).abs().max()) < 6 * math.sqrt(2 / 400), name


def test_white_noise_at_coordinates_moves_with_them_and_depends_on_nothing_else():
    grid = pixel_grid(48, 48)
    still = N.white_noise_at(5, 3, grid)
    moved = N.white_noise_at(5, 3, grid + torch.tensor([5.0, -3.0], dtype=torch.float64).view(1, 2, 1, 1))
    # Pixel p of the moved frame shows the plane at p + (5, -3): exactly the still frame there.
    assert torch.equal(moved[..., 3:, :-5], still[..., :-3, 5:])
    # A frame's noise is the same alone or batched, and differs by seed.
    far = grid + 200.25
    both = N.white_noise_at(5, 3, torch.cat([grid, far]))
    assert torch.equal(both[:1], still) and torch.equal(both[1:], N.white_noise_at(5, 3, far))
    assert not torch.equal(N.white_noise_at(6, 3, grid), still)
    # Sub-pixel motion: neighbours stay uncorrelated (every pixel's footprint is its own).
    frac = N.white_noise_at(5, 4, grid + 0.37).double()
    assert abs(float((frac[..., 1:] * frac[..., :-1]).mean())) < 0.05
