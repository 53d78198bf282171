"""Flow densification: the shared solver, the three tensors, the network and the public API."""

import numpy as np
import pytest
import torch

from raywarp import synthetic
from raywarp.densify import densify, level_steps, mirror
from raywarp.densify.network import DEFAULT_WEIGHTS, DensifierConfig, DensifierUNet, load_densifier, save_densifier
from raywarp.densify.solver import apply_stencil, pyramid_inpaint, stable_step_size, stencil_weights
from raywarp.densify.tensor_field import eed_tensor, homogeneous_tensor, tensor_from_parts
from raywarp.densify.training import densify_with, masked_epe
from raywarp.flow import densify as densify_from_flow


def grid(h, w):
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return x[None, None], y[None, None]


def random_psd_field(h, w, seed=0):
    """A wildly varying positive semidefinite tensor field with eigenvalues in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64) * 2 * np.pi
    v = torch.cat([angle.cos(), angle.sin()], 1)
    mu1, mu2 = (torch.rand(1, 1, h, w, generator=g, dtype=torch.float64) ** 4 for _ in range(2))
    alpha = 0.5 * torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    return tensor_from_parts(v, mu1, mu2, alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.45])
def test_stencil_is_consistent_for_constant_tensor(alpha):
    x, y = grid(9, 11)
    one = torch.ones_like(x)
    weights = stencil_weights(0.7 * one, 0.3 * one, 0.5 * one, alpha * one)
    for u, expected in [(x * x, 2 * 0.7), (y * y, 2 * 0.5), (x * y, 2 * 0.3), (3 * x - y + 2, 0.0)]:
        interior = apply_stencil(u, weights)[..., 1:-1, 1:-1]
        torch.testing.assert_close(interior, torch.full_like(interior, expected), atol=1e-9, rtol=0)


def test_stencil_is_symmetric_negative_semidefinite_for_any_psd_tensor():
    # L2 stability rests on this: <v, A u> = <A v, u> and <u, A u> <= 0 even where
    # strong anisotropy makes individual weights negative.
    a, b, c, alpha = random_psd_field(14, 17)
    weights = stencil_weights(a, b, c, alpha)
    assert min(float(w.min()) for w in weights) < 0  # the case the 2x2-cell assembly must survive
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        u, v = (torch.randn(1, 1, 14, 17, generator=g, dtype=torch.float64) for _ in range(2))
        assert float((u * apply_stencil(u, weights)).sum()) <= 1e-12
        torch.testing.assert_close((v * apply_stencil(u, weights)).sum(), (u * apply_stencil(v, weights)).sum())
    # The step size keeps the explicit iteration bounded.
    tau = stable_step_size(weights)
    u = torch.randn(1, 1, 14, 17, generator=g, dtype=torch.float64)
    norms = []
    for _ in range(200):
        u = u + tau * apply_stencil(u, weights)
        norms.append(float(u.norm()))
    assert all(n2 <= n1 + 1e-9 for n1, n2 in zip(norms, norms[1:]))


def test_constant_and_known_values_are_preserved():
    flow = torch.tensor([2.5, -1.0]).view(1, 2, 1, 1).expand(1, 2, 33, 45).clone()
    mask = (torch.rand(1, 1, 33, 45, generator=torch.Generator().manual_seed(0)) < 0.05).float()
    image = torch.rand(1, 3, 33, 45, generator=torch.Generator().manual_seed(1))
    for method in ("laplace", "eed"):
        out = densify(flow, mask, image, method=method)
        torch.testing.assert_close(out, flow, atol=1e-4, rtol=0)
    sparse = torch.randn(1, 2, 33, 45)
    out = densify(sparse, mask, image, method="eed")
    assert torch.equal(out[mask.expand_as(out).bool()], sparse[mask.expand_as(out).bool()])


def test_fsi_pyramid_matches_plain_explicit_with_ten_times_fewer_steps():
    scene = synthetic.make_batch(3, 2, size=(128, 128))
    rng = np.random.default_rng(0)
    known = torch.from_numpy(np.stack([synthetic.hole_mask(rng, (128, 128)) for _ in range(2)])[:, None])
    image, gt = scene["frame0"], scene["flow"]

    def solve(steps, fsi):
        return densify(gt, known, image, method="laplace", steps=steps, fsi=fsi, coarsest_side=None)

    def err(u):
        return float(masked_epe(u, gt, 1 - known))

    accelerated = solve((5, 15, 30, 45), True)  # 95 steps
    assert err(accelerated) <= 1.01 * err(solve((950,), False))  # as good as 10x the plain steps
    converged = solve((30000,), False)
    distance = float((accelerated - converged).norm(dim=1).mean())
    assert distance < 1 / 3 * float((solve((5, 15, 30, 45), False) - converged).norm(dim=1).mean())  # FSI helps
    assert distance < 0.05


def test_odd_sizes_numpy_and_reexport():
    rng = np.random.default_rng(1)
    flow = rng.normal(size=(2, 37, 53)).astype(np.float32)
    mask = synthetic.iid_mask(rng, (37, 53), 0.1)[None]
    image = rng.uniform(size=(3, 37, 53)).astype(np.float32)
    for method in ("laplace", "eed", "neuroexplicit"):
        out = densify_from_flow(flow, mask, image, method=method)
        assert isinstance(out, np.ndarray) and out.shape == (2, 37, 53) and np.isfinite(out).all()
    tiny = densify(torch.zeros(1, 2, 3, 2), torch.tensor([[[[1.0, 0], [0, 0], [0, 0]]]]), torch.zeros(1, 3, 3, 2))
    assert tiny.shape == (1, 2, 3, 2)


def test_bad_input_names_the_argument():
    flow, mask, image = torch.zeros(1, 2, 16, 16), torch.ones(1, 1, 16, 16), torch.zeros(1, 3, 16, 16)
    mask[..., 4:8, 4:8] = 0
    with pytest.raises(ValueError, match="method"):
        densify(flow, mask, image, method="biharmonic")
    with pytest.raises(ValueError, match="flow"):
        densify(torch.zeros(1, 3, 16, 16), mask, image)
    with pytest.raises(ValueError, match="mask"):
        densify(flow, mask[..., :8], image)
    with pytest.raises(ValueError, match="image"):
        densify(flow, mask, torch.zeros(1, 3, 16, 16) * float("nan"))
    with pytest.raises(ValueError, match="mask"):
        densify(flow, torch.zeros(1, 1, 16, 16), image)
    with pytest.raises(ValueError, match="mask"):
        densify(flow, mask * 2, image)
    bad = flow.clone()
    bad[0, 0, 0, 0] = float("inf")  # known pixel
    with pytest.raises(ValueError, match="flow"):
        densify(bad, mask, image)
    with pytest.raises(ValueError, match="steps"):
        densify(flow, mask, image, method="neuroexplicit", steps=(10, 10))


def test_unknown_values_may_be_nan_and_all_known_is_identity():
    flow = torch.randn(2, 2, 20, 24)
    mask = torch.ones(2, 1, 20, 24)
    torch.testing.assert_close(densify(flow, mask, torch.rand(2, 3, 20, 24), method="eed"), flow)
    mask[..., 5:15, 5:15] = 0
    holey = flow.clone()
    holey[mask.expand_as(flow) == 0] = float("nan")
    out = densify(holey, mask, torch.rand(2, 3, 20, 24), method="laplace")
    assert torch.isfinite(out).all()


def test_eed_diffuses_along_edges_not_across():
    # A vertical image edge: flow must not leak from the left half into the right.
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1.0
    a, b, c, _ = eed_tensor(image)
    assert float(a[0, 0, 10, 15]) < 0.05 and float(c[0, 0, 10, 15]) > 0.95  # blocked in x, free in y
    flow = torch.zeros(1, 2, 32, 32)
    flow[:, 0, :, 16:] = 4.0
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., ::8, 4] = 1  # samples on the left only ...
    mask[..., ::8, 28] = 1  # ... and on the right
    eed = densify(flow, mask, image, method="eed")
    lap = densify(flow, mask, image, method="laplace")
    assert float((eed - flow).abs().mean()) < 0.5 * float((lap - flow).abs().mean())


def test_homogeneous_tensor_is_identity():
    a, b, c, alpha = homogeneous_tensor(torch.rand(2, 3, 5, 6))
    assert torch.all(a == 1) and torch.all(b == 0) and torch.all(c == 1) and torch.all(alpha == 0)


def test_network_trains_through_the_solver_and_roundtrips(tmp_path):
    torch.manual_seed(0)
    model = DensifierUNet(DensifierConfig(widths=(8, 16, 16, 16)))
    for head in model.heads:  # heads start at zero (no gradient upstream): perturb them
        torch.nn.init.normal_(head.weight, std=0.01)
    scene = synthetic.make_batch(0, 2, size=(40, 48))
    known = torch.from_numpy(np.stack([synthetic.hole_mask(np.random.default_rng(i), (40, 48)) for i in range(2)])[:, None])
    pred = densify_with(model, scene["frame0"], scene["flow"], known, (2, 2, 4, 4))
    loss = masked_epe(pred, scene["flow"], 1 - known)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(grads) == len(list(model.parameters()))  # every layer gets a gradient
    path = tmp_path / "d.safetensors"
    save_densifier(model, path)
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a pickle/zip checkpoint
    loaded = load_densifier(path)
    assert loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(densify_with(loaded, scene["frame0"], scene["flow"], known, (2, 2, 4, 4)), pred.detach())


def test_shipped_weights_load_and_match_the_paper_size():
    model = load_densifier()
    params = sum(p.numel() for p in model.parameters())
    assert params in range(1_000_000, 1_600_000)  # about 1.3 M, as published
    assert DEFAULT_WEIGHTS.with_suffix(".md").read_text().count("jobs/train_densifier.py") >= 1
    with pytest.raises(FileNotFoundError, match="densifier weights"):
        load_densifier("/nonexistent/densifier.safetensors")


def test_batch_items_are_independent():
    # The pipeline batches clips arbitrarily: a clip's result must not depend on its batch-mates.
    scene = synthetic.make_batch(5, 3, size=(32, 40))
    rng = np.random.default_rng(2)
    known = torch.from_numpy(np.stack([synthetic.random_mask(rng, (32, 40)) for _ in range(3)])[:, None])
    for method in ("laplace", "eed", "neuroexplicit"):
        together = densify(scene["flow"], known, scene["frame0"], method=method)
        alone = densify(scene["flow"][1:2], known[1:2], scene["frame0"][1:2], method=method)
        torch.testing.assert_close(together[1:2], alone, atol=1e-4, rtol=1e-4)


def test_pyramid_inpaint_fills_a_large_hole():
    # One level cannot fill a hole wider than its steps reach; the pyramid can.
    x, y = grid(128, 128)
    flow = torch.cat([x / 32, 2 - y / 64], 1).float()  # linear: its own Laplace solution
    known = torch.ones(1, 1, 128, 128)
    known[..., 8:120, 8:120] = 0
    image = torch.zeros(1, 3, 128, 128)
    one_level = pyramid_inpaint(flow * known, known, image, lambda lv, im: homogeneous_tensor(im), steps=(95,))
    four = pyramid_inpaint(flow * known, known, image, lambda lv, im: homogeneous_tensor(im), steps=(5, 15, 30, 45))
    assert float((four - flow).abs().max()) < 0.05 < float((one_level - flow).abs().max())


def test_large_frames_get_coarser_levels_and_fill_large_holes():
    assert level_steps(128, 96, (5, 15, 30, 45)) == [5, 15, 30, 45]  # 128 -> 16 px already
    assert level_steps(250, 370, (5, 15, 30, 45)) == [5, 5, 5, 15, 30, 45]  # 370 -> 24 -> 12 px
    assert level_steps(250, 370, (5, 15, 30, 45), coarsest_side=None) == [5, 15, 30, 45]
    # A hole 3/4 of a 512² frame: four levels end at 64 px, where 5 steps cannot cross it.
    x, y = grid(512, 512)
    flow = torch.cat([x / 64, 4 - y / 128], 1).float()  # linear: its own Laplace solution
    known = torch.ones(1, 1, 512, 512)
    known[..., 64:448, 64:448] = 0
    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    for method in ("laplace", "neuroexplicit"):
        deep = densify(flow, known, image, method=method)
        fixed = densify(flow, known, image, method=method, coarsest_side=None)
        assert float((deep - flow).norm(dim=1).mean()) < 0.5 * float((fixed - flow).norm(dim=1).mean()), method
    with pytest.raises(ValueError, match="coarsest_side"):
        densify(flow, known, image, coarsest_side=0)


def test_densify_is_equivariant_to_flow_offset_and_scale():
    # Diffusion is linear in the flow and the network sees normalised flow, so
    # densify(a f + c) = a densify(f) + c: small training motions carry over to large ones.
    scene = synthetic.make_batch(9, 1, size=(48, 56))
    known = torch.from_numpy(synthetic.hole_mask(np.random.default_rng(3), (48, 56)))[None, None]
    offset = torch.tensor([7.0, -3.0]).view(1, 2, 1, 1)
    for method in ("laplace", "eed", "neuroexplicit"):
        base = densify(scene["flow"], known, scene["frame0"], method=method)
        moved = densify(5 * scene["flow"] + offset, known, scene["frame0"], method=method)
        torch.testing.assert_close(moved, 5 * base + offset, atol=2e-3, rtol=1e-4)


def test_neuroexplicit_is_equivariant_to_mirroring_only_when_averaged():
    # Mirroring the frame, its flow and mask left-right mirrors the filled flow: exactly for
    # the average over the mirror images (odd sizes too), far from it for one pass of the network.
    scene = synthetic.make_batch(9, 2, size=(63, 77))
    rng = np.random.default_rng(3)
    known = torch.from_numpy(np.stack([synthetic.hole_mask(rng, (63, 77)) for _ in range(2)])[:, None])
    for averaged in (True, False):
        base = densify(scene["flow"], known, scene["frame0"], mirror_average=averaged)
        assert torch.equal(base * known, scene["flow"] * known)  # known flow kept exactly
        mirrored = densify(mirror(scene["flow"], (-1,), flow=True), mirror(known, (-1,)), mirror(scene["frame0"], (-1,)),
                           mirror_average=averaged)
        gap = float((mirror(mirrored, (-1,), flow=True) - base).abs().max())
        assert gap < 1e-4 if averaged else gap > 0.1, (averaged, gap)


def test_mirror_flips_the_mirrored_flow_component():
    flow = torch.stack([torch.full((3, 4), 2.0), torch.full((3, 4), -1.0)])[None]
    flow[0, :, 0, 0] = torch.tensor([5.0, 7.0])
    lr = mirror(flow, (-1,), flow=True)
    assert lr[0, :, 0, -1].tolist() == [-5.0, 7.0] and lr[0, :, 1, 1].tolist() == [-2.0, -1.0]
    both = mirror(flow, (-2, -1), flow=True)
    assert both[0, :, -1, -1].tolist() == [-5.0, -7.0]
    assert torch.equal(mirror(lr, (-1,), flow=True), flow)


@pytest.mark.slow
def test_bench_prints_a_row_per_set_and_mask(capsys):
    from raywarp.bench import densify as bench

    rows = bench.main(["--scenes", "2", "--real-draws", "1", "--size", "48", "--plain-max", "190"])
    out = capsys.readouterr().out
    assert len(rows) == 3 * len(bench.MASKS)
    assert all(np.isfinite(r[m]) for r in rows for m in ("laplace", "eed", "neuroexplicit", "one pass"))
    for set_name in ("held-out affine", "real (Motorcycle)", "held-out perspective"):
        assert out.count(f"| {set_name} |") == len(bench.MASKS)
