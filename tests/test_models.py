"""Tests for raywarp.models: every adapter loaded through load_denoiser from a tiny local folder.

The tiny models have random weights, so the tests check plumbing (shapes, dtypes,
gradients, variant rules, errors), and the x0 formulas against a stub network.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler

from raywarp import models as M
from raywarp.models import (
    Denoiser,
    LatentDenoiser,
    ModelNotFoundError,
    PixelDenoiser,
    load_denoiser,
    tiny_latent_pipeline,
    tiny_pixel_unet,
)

KINDS = ["pixel", "pixel_cond", "sd", "sdxl", "inpaint", "upscale"]
# Output image size per kind: the upscaler's u is 1/4 of it, the others' u 1/2 (VAE) or 1/1.
IMAGE_SIZE = {"pixel": 16, "pixel_cond": 16, "sd": 16, "sdxl": 16, "inpaint": 16, "upscale": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(kind: str, root):
    """Write a tiny model of `kind` under `root` the way a user's folder would look."""
    if kind == "pixel":  # bare UNet2DModel folder, scheduler_config.json beside it
        tiny_pixel_unet(conditional=False).save_pretrained(root)
        DDIMScheduler(prediction_type="v_prediction").save_pretrained(root)
    elif kind == "pixel_cond":  # bare UNet2DModel folder, scheduler in a subfolder
        tiny_pixel_unet(conditional=True).save_pretrained(root)
        DDPMScheduler().save_pretrained(root / "scheduler")
    else:
        tiny_latent_pipeline(kind, root)
    return root


def operator_info(kind: str, batch: int = 2) -> dict:
    h = IMAGE_SIZE[kind]
    g = torch.Generator().manual_seed(0)
    baseline = torch.rand(batch, 3, h, h, generator=g)
    if kind == "upscale":
        mask = torch.ones(batch, 1, h, h)
        return {"task": "sr", "scale": 4, "baseline": baseline, "mask": mask, "y": F.avg_pool2d(baseline, 4)}
    mask = (torch.rand(batch, 1, h, h, generator=g) > 0.3).float()
    return {"task": "inpaint", "scale": 1, "baseline": baseline, "mask": mask, "y": baseline * mask}


@pytest.fixture(scope="module")
def denoisers(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {kind: load_denoiser(str(build(kind, root / kind))) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_predict_x0_shapes_finite_and_differentiable(denoisers, kind):
    den = denoisers[kind]
    info = operator_info(kind)
    cond = den.condition(info["y"], info)
    u = den.encode(info["baseline"]).requires_grad_(True)
    h = IMAGE_SIZE[kind] // den.scale_factor
    assert u.shape == (2, den.channels, h, h)
    assert h % den.multiple == 0

    t = 500
    x0 = den.predict_x0(u, t, cond)
    assert x0.shape == u.shape and x0.dtype == u.dtype
    assert torch.isfinite(x0).all()
    (grad,) = torch.autograd.grad(x0.square().sum(), u)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The network's own dependence on u reaches the gradient, not only the explicit u term.
    a = float(den.alphas_cumprod[t])
    direct = {"epsilon": 1 / a**0.5, "v_prediction": a**0.5, "sample": 0.0}[den.prediction_type]
    assert not torch.allclose(grad, 2 * x0.detach() * direct, rtol=1e-3, atol=1e-5)

    image = den.decode(x0)
    assert image.shape == (2, 3, IMAGE_SIZE[kind], IMAGE_SIZE[kind])
    assert image.min() >= 0 and image.max() <= 1
    assert torch.autograd.grad(den.decode(u).sum(), u)[0].abs().sum() > 0


@pytest.mark.parametrize(
    "kind, cls, space, channels, scale_factor, conditional, prediction_type",
    [
        ("pixel", PixelDenoiser, "pixel", 3, 1, False, "v_prediction"),
        ("pixel_cond", PixelDenoiser, "pixel", 3, 1, True, "epsilon"),
        ("sd", LatentDenoiser, "latent", 4, 2, False, "epsilon"),
        ("sdxl", LatentDenoiser, "latent", 4, 2, False, "epsilon"),
        ("inpaint", LatentDenoiser, "latent", 4, 2, True, "epsilon"),
        ("upscale", LatentDenoiser, "latent", 4, 4, True, "v_prediction"),
    ],
)
def test_adapter_attributes(denoisers, kind, cls, space, channels, scale_factor, conditional, prediction_type):
    den = denoisers[kind]
    assert isinstance(den, cls)
    assert (den.space, den.channels, den.scale_factor, den.multiple) == (space, channels, scale_factor, 2)
    assert den.conditional is conditional
    assert den.prediction_type == prediction_type
    assert den.alphas_cumprod.dtype == torch.float64 and den.alphas_cumprod.device.type == "cpu"
    assert den.alphas_cumprod.shape == (1000,) and (den.alphas_cumprod.diff() < 0).all()
    if cls is LatentDenoiser:
        assert den.variant == {"sd": "prior", "sdxl": "prior"}.get(kind, kind)
        assert den.sdxl is (kind == "sdxl")


def test_zero_text_embeddings_without_text_encoder(denoisers):
    assert torch.equal(denoisers["sd"].prompt_embeds, torch.zeros(1, 77, 32))
    assert denoisers["sd"].pooled_prompt_embeds is None
    assert torch.equal(denoisers["sdxl"].pooled_prompt_embeds, torch.zeros(1, 32))


def test_default_schedule_when_no_scheduler_config(tmp_path):
    tiny_pixel_unet(conditional=False).save_pretrained(tmp_path)
    den = load_denoiser(str(tmp_path))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert den.prediction_type == "epsilon"
    torch.testing.assert_close(den.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-7)


def test_inpaint_mask_is_inverted_to_holes_at_latent_size(denoisers):
    den = denoisers["inpaint"]
    info = operator_info("inpaint", batch=1)
    info["mask"] = torch.ones(1, 1, 16, 16)
    info["mask"][..., :3, :3] = 0  # a hole touching latent cells (0..1, 0..1)
    hole = den.condition(info["y"], info)["extra"][:, :1]
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., :2, :2] = 1
    assert torch.equal(hole, expected)


def test_upscaler_requires_scale_4(denoisers):
    info = operator_info("upscale")
    info["scale"] = 2
    with pytest.raises(ValueError, match="scale"):
        denoisers["upscale"].condition(info["y"], info)


def test_conditional_pixel_model_needs_condition(denoisers):
    den = denoisers["pixel_cond"]
    with pytest.raises(ValueError, match="condition"):
        den.predict_x0(torch.zeros(1, 3, 16, 16), 10, None)


# --------------------------------------------------------------------------- formulas


class _Stub(Denoiser):
    """A Denoiser whose network returns a fixed target, to test the x0 conversions."""

    space, channels, scale_factor, multiple, conditional = "pixel", 3, 1, 1, False

    def __init__(self, prediction_type, target):
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        super().__init__(torch.cumprod(1 - betas, 0), prediction_type, "cpu", torch.float64)
        self.target = target

    def _network(self, u, t, cond):
        return self.target


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("t", [0, 400, 999])
def test_prediction_type_conversions_recover_x0(prediction_type, t):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    a = float(_Stub("epsilon", None).alphas_cumprod[t])
    u = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    target = {"epsilon": eps, "v_prediction": a**0.5 * eps - (1 - a) ** 0.5 * x0, "sample": x0}[prediction_type]
    torch.testing.assert_close(_Stub(prediction_type, target).predict_x0(u, t, None), x0, rtol=1e-9, atol=1e-9)


def test_bad_prediction_type_and_timestep():
    with pytest.raises(ValueError, match="prediction_type"):
        _Stub("flow", None)
    with pytest.raises(ValueError, match="t:"):
        _Stub("sample", torch.zeros(1)).predict_x0(torch.zeros(1), 1000, None)


@pytest.mark.parametrize("steps", [1, 3, 7, 50, 999, 1000])
def test_timesteps_trailing_descending(steps):
    ts = _Stub("epsilon", None).timesteps(steps)
    assert ts.dtype == torch.long and len(ts) == steps
    assert ts[0] == 999 and ts[-1] >= 0
    assert (ts.diff() < 0).all()


def test_timesteps_rejects_bad_counts():
    den = _Stub("epsilon", None)
    for steps in (0, 1001, 2.0):
        with pytest.raises(ValueError, match="steps"):
            den.timesteps(steps)


# --------------------------------------------------------------------------- loading errors


def test_hub_id_fails_fast_and_mentions_local():
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="local") as err:
        load_denoiser("stabilityai/stable-diffusion-x4-upscaler")
    assert time.perf_counter() - start < 2
    assert "never downloads" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_pickle_only_folder_is_refused(tmp_path):
    tiny_pixel_unet(conditional=False).save_pretrained(tmp_path, safe_serialization=False)
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(ValueError, match="safetensors"):
        load_denoiser(str(tmp_path))


def test_pixel_pipeline_folder_loads(tmp_path):
    DDPMPipeline(tiny_pixel_unet(conditional=False), DDPMScheduler(prediction_type="sample")).save_pretrained(tmp_path)
    den = load_denoiser(tmp_path)
    assert isinstance(den, PixelDenoiser) and den.prediction_type == "sample"


def test_folder_without_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        load_denoiser(str(tmp_path))


def test_default_without_weights_names_training_job(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "DEFAULT_PRIOR_DIR", tmp_path / "prior")
    with pytest.raises(FileNotFoundError, match="jobs/train_prior.py"):
        load_denoiser("default")


def test_default_loads_shipped_prior(tmp_path, monkeypatch):
    tiny_pixel_unet(conditional=True).save_pretrained(tmp_path)
    monkeypatch.setattr(M, "DEFAULT_PRIOR_DIR", tmp_path)
    den = load_denoiser("default")
    assert isinstance(den, PixelDenoiser) and den.conditional


def test_tiny_models_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = tiny_pixel_unet(True), tiny_pixel_unet(True)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# --------------------------------------------------------------------------- text encoders


class _Output:
    def __init__(self, first, hidden_states):
        self.first, self.hidden_states = first, hidden_states

    def __getitem__(self, i):
        assert i == 0
        return self.first


class FakeTokenizer:
    model_max_length = 77

    @classmethod
    def from_pretrained(cls, path, local_files_only):
        assert local_files_only
        return cls()

    def __call__(self, text, **kwargs):
        assert text == ""
        return SimpleNamespace(input_ids=torch.zeros(1, self.model_max_length, dtype=torch.long))


class FakeTextModel:
    """Hidden state i is filled with i; the first output is the last hidden state."""

    width = 32

    @classmethod
    def from_pretrained(cls, path, local_files_only, use_safetensors):
        assert local_files_only and use_safetensors
        return cls()

    def __call__(self, ids, output_hidden_states):
        hidden = tuple(torch.full((1, ids.shape[1], self.width), float(i)) for i in range(3))
        return _Output(hidden[-1], hidden)


class FakeHalfTextModel(FakeTextModel):
    width = 16


class FakeHalfTextModelWithProjection(FakeHalfTextModel):
    def __call__(self, ids, output_hidden_states):
        return _Output(torch.full((1, 32), 7.0), super().__call__(ids, output_hidden_states).hidden_states)


def add_text_encoders(root, encoders):
    index = json.loads((root / "model_index.json").read_text())
    for enc, tok, cls in encoders:
        (root / enc).mkdir()
        (root / enc / "model.safetensors").write_bytes(b"")
        (root / tok).mkdir()
        index[enc], index[tok] = ["transformers", cls], ["transformers", "FakeTokenizer"]
    (root / "model_index.json").write_text(json.dumps(index))


def fake_transformers():
    return SimpleNamespace(
        FakeTokenizer=FakeTokenizer,
        FakeTextModel=FakeTextModel,
        FakeHalfTextModel=FakeHalfTextModel,
        FakeHalfTextModelWithProjection=FakeHalfTextModelWithProjection,
    )


def test_sd_text_encoder_embeds_empty_prompt(tmp_path, monkeypatch):
    root = tiny_latent_pipeline("sd", tmp_path)
    add_text_encoders(root, [("text_encoder", "tokenizer", "FakeTextModel")])
    monkeypatch.setitem(sys.modules, "transformers", fake_transformers())
    den = load_denoiser(str(root))
    assert torch.equal(den.prompt_embeds, torch.full((1, 77, 32), 2.0))  # last hidden state


def test_sdxl_text_encoders_penultimate_layers_and_pooled(tmp_path, monkeypatch):
    root = tiny_latent_pipeline("sdxl", tmp_path)
    add_text_encoders(
        root,
        [
            ("text_encoder", "tokenizer", "FakeHalfTextModel"),
            ("text_encoder_2", "tokenizer_2", "FakeHalfTextModelWithProjection"),
        ],
    )
    monkeypatch.setitem(sys.modules, "transformers", fake_transformers())
    den = load_denoiser(str(root))
    assert torch.equal(den.prompt_embeds, torch.full((1, 77, 32), 1.0))  # both penultimate layers
    assert torch.equal(den.pooled_prompt_embeds, torch.full((1, 32), 7.0))
    info = operator_info("sdxl")
    assert torch.isfinite(den.predict_x0(den.encode(info["baseline"]), 10, den.condition(info["y"], info))).all()


def test_text_encoder_without_transformers_warns_and_uses_zeros(tmp_path, monkeypatch):
    root = tiny_latent_pipeline("sd", tmp_path)
    add_text_encoders(root, [("text_encoder", "tokenizer", "FakeTextModel")])
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.warns(UserWarning, match="transformers is not installed"):
        den = load_denoiser(str(root))
    assert torch.equal(den.prompt_embeds, torch.zeros(1, 77, 32))


def test_accelerate_runs_the_network_in_lower_precision_and_nhwc():
    sched = DDIMScheduler(num_train_timesteps=1000)
    exact = PixelDenoiser(tiny_pixel_unet(conditional=False), sched.alphas_cumprod)
    fast = PixelDenoiser(tiny_pixel_unet(conditional=False), sched.alphas_cumprod).accelerate("bf16", channels_last=True)
    conv = next(m for m in fast.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    u = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = exact.predict_x0(u, 500, None), fast.predict_x0(u, 500, None)
    assert b.dtype == torch.float32  # the sampler's state stays float32
    err = float((a - b).abs().max())
    assert 0 < err < 0.05 * float(a.abs().max())  # bf16 arithmetic: close, not equal
    with pytest.raises(ValueError, match="precision"):
        exact.accelerate("fp8")
