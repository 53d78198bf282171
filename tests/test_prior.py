"""The default prior: GP-noise training step, saving, loading through load_denoiser."""

import dataclasses

import numpy as np
import torch

from raywarp import prior
from raywarp.models import NOISE_SPEC_FILE, PixelDenoiser, load_denoiser, noise_spec


def test_training_step_learns_and_saves_a_loadable_model(tmp_path):
    torch.manual_seed(0)
    cfg = dataclasses.replace(prior.PriorTrainConfig(), batch=4, size=32, bank=1, bank_size=48, num_features=256)
    unet, scheduler = prior.default_unet(), prior.default_scheduler()
    bank = prior.gp_bank(cfg)
    assert abs(float(bank.std()) - 1) < 0.1  # GP noise has unit marginal variance
    before = [p.detach().clone() for p in unet.parameters()]
    optimiser = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    losses = [prior.training_step(unet, scheduler, optimiser, rng, bank, cfg) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters()))
    prior.save_prior(unet, scheduler, tmp_path / "p", cfg, "test")
    den = load_denoiser(str(tmp_path / "p"))
    assert isinstance(den, PixelDenoiser) and den.conditional and den.prediction_type == "sample"
    assert noise_spec(tmp_path / "p") == {"noise": "gp", "length_scale": cfg.length_scale, "num_features": 256}


def test_a_white_noise_prior_trains_on_white_noise_and_says_so(tmp_path):
    cfg = dataclasses.replace(prior.PriorTrainConfig(), batch=4, size=32, noise="white")
    noise = prior.training_noise(np.random.default_rng(0), None, cfg)
    assert noise.shape == (4, 3, 32, 32) and abs(float(noise.std()) - 1) < 0.05
    # White: neighbouring pixels uncorrelated (GP noise at ε = 0.64 px correlates them by ~0.3).
    assert abs(float((noise[..., 1:] * noise[..., :-1]).mean())) < 0.05
    unet, scheduler = prior.default_unet(), prior.default_scheduler()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    assert np.isfinite(prior.training_step(unet, scheduler, optimiser, np.random.default_rng(0), None, cfg))
    prior.save_prior(unet, scheduler, tmp_path / "w", cfg, "test")
    assert noise_spec(tmp_path / "w") == {"noise": "white"}
    (tmp_path / "w" / NOISE_SPEC_FILE).unlink()  # a folder without a spec is a white-noise model
    assert noise_spec(tmp_path / "w") == {"noise": "white"}
    assert noise_spec("default")["noise"] == "gp"


def test_degradations_and_crops():
    rng = np.random.default_rng(1)
    clean = prior.photo_patches(rng, 4, 32)
    assert clean.shape == (4, 3, 32, 32) and 0 <= float(clean.min()) and float(clean.max()) <= 1
    baseline, mask = prior.degrade(rng, clean)
    assert torch.all(mask[:2] == 1) and 0 < float(mask[2:].mean()) < 1  # SR half, holes half
    assert torch.equal(baseline[2:] * mask[2:], clean[2:] * mask[2:])  # observed pixels kept
    bank = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    crops = prior.gp_crops(rng, bank, 5, 4)
    assert crops.shape == (5, 3, 4, 4)
    assert all(any(set(c.flatten().tolist()) <= set(b.flatten().tolist()) for b in bank) for c in crops)


def test_the_pipeline_takes_its_default_mode_and_length_scale_from_the_noise_spec(tmp_path):
    import argparse

    from raywarp.cli import add_run_args, config_from_args

    parser = argparse.ArgumentParser()
    add_run_args(parser)
    cfg = dataclasses.replace(prior.PriorTrainConfig(), length_scale=1.5, num_features=500)
    prior.save_prior(prior.default_unet(), prior.default_scheduler(), tmp_path / "gp", cfg, "test")
    white = dataclasses.replace(prior.PriorTrainConfig(), noise="white")
    prior.save_prior(prior.default_unet(), prior.default_scheduler(), tmp_path / "white", white, "test")

    def sampler(*args):
        return config_from_args(parser.parse_args(["src", "--out", "dst", *args])).sampler

    assert (sampler("--model", str(tmp_path / "gp")).mode, sampler("--model", str(tmp_path / "gp")).length_scale) == ("warped", 1.5)
    assert sampler("--model", str(tmp_path / "gp")).num_features == 500
    assert sampler("--model", str(tmp_path / "white")).mode == "white-warped"
    assert sampler("--model", str(tmp_path / "white"), "--mode", "gp-warp").mode == "gp-warp"  # an explicit mode wins
    assert sampler().mode == "warped"  # the shipped prior is a GP-noise model
