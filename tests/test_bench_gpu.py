"""The GPU benchmark: its shipped real configs, and a tiny smoke run on the CPU."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from raywarp.bench import gpu
from raywarp.sampler import MODES


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_upscaler_configs_are_the_x4_upscalers():
    configs = gpu.load_configs("sd-x4-upscaler")
    unet, vae, scheduler = configs["unet"], configs["vae"], configs["scheduler"]
    assert unet["in_channels"] == 7 and unet["out_channels"] == 4
    assert unet["num_class_embeds"] == 1000 and unet["cross_attention_dim"] == 1024
    assert unet["block_out_channels"] == [256, 512, 512, 1024] and unet["only_cross_attention"] == [True, True, True, False]
    assert len(vae["down_block_types"]) == 3 and vae["scaling_factor"] == 0.08333
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["beta_schedule"] == "scaled_linear"
    denoiser = gpu.build_denoiser(configs, "meta", torch.float16)  # structure only, no memory
    assert isinstance(denoiser.unet, UNet2DConditionModel) and isinstance(denoiser.vae, AutoencoderKL)
    assert denoiser.variant == "upscale" and denoiser.scale_factor == 4 and denoiser.prediction_type == "v_prediction"
    assert denoiser.unet.class_embedding.num_embeddings == 1000
    assert denoiser.vae.dtype == torch.float32  # force_upcast, diffusers' default
    assert 0.47e9 < sum(p.numel() for p in denoiser.unet.parameters()) < 0.48e9


def test_sdxl_configs_are_sdxl_bases():
    configs = gpu.load_configs("sdxl-base")
    unet, vae, scheduler = configs["unet"], configs["vae"], configs["scheduler"]
    assert unet["in_channels"] == 4 and unet["cross_attention_dim"] == 2048
    assert unet["addition_embed_type"] == "text_time" and unet["projection_class_embeddings_input_dim"] == 2816
    assert unet["transformer_layers_per_block"] == [1, 2, 10] and unet["use_linear_projection"] is True
    assert vae["scaling_factor"] == 0.13025 and vae["force_upcast"] is True and len(vae["down_block_types"]) == 4
    assert scheduler["prediction_type"] == "epsilon" and scheduler["beta_end"] == 0.012
    denoiser = gpu.build_denoiser(configs, "meta", torch.float16)  # the 2.6 B parameters, without memory
    assert denoiser.variant == "prior" and denoiser.sdxl and denoiser.scale_factor == 8
    assert tuple(denoiser.pooled_prompt_embeds.shape) == (1, 1280)
    assert len(denoiser.unet.down_blocks[2].attentions[0].transformer_blocks) == 10
    assert 2.56e9 < sum(p.numel() for p in denoiser.unet.parameters()) < 2.57e9


@pytest.mark.parametrize("model", gpu.MODELS)
def test_real_networks_take_the_benchmark_sizes(model):
    # On the meta device the full-size forward pass is shapes only: no memory, no arithmetic.
    denoiser = gpu.build_denoiser(gpu.load_configs(model), "meta", torch.float16)
    side = gpu.OUTPUT_SIDES[model]
    low, high = torch.zeros(1, 3, side // gpu.SCALE, side // gpu.SCALE), torch.zeros(1, 3, side, side)
    cond = denoiser.condition(low, {"task": "sr", "scale": gpu.SCALE, "baseline": high, "mask": torch.ones(1, 1, side, side)})
    u = torch.zeros(1, denoiser.channels, side // denoiser.scale_factor, side // denoiser.scale_factor, device="meta")
    assert denoiser.predict_x0(u, 500, cond).shape == u.shape


@pytest.mark.parametrize("model", gpu.MODELS)
def test_tiny_configs_keep_the_structure(model):
    real, tiny = gpu.load_configs(model), gpu.load_configs(model, tiny=True)
    for part in ("unet", "vae"):
        for key in ("down_block_types", "up_block_types", "in_channels", "out_channels", "latent_channels",
                    "num_class_embeds", "only_cross_attention", "use_linear_projection", "addition_embed_type",
                    "scaling_factor", "force_upcast"):
            assert tiny[part].get(key) == real[part].get(key), (part, key)
    assert max(tiny["unet"]["block_out_channels"]) <= 128 and tiny["unet"]["layers_per_block"] == 1


def test_tiny_run_times_every_model_and_mode(capsys):
    rows = gpu.main(["--tiny", "--device", "cpu"])
    assert [(r["model"], r["mode"]) for r in rows] == [(m, mode) for m in gpu.MODELS for mode in MODES]
    for r in rows:
        assert r["s/frame"] > 0 and 0 < r["denoiser share"] <= 1 and r["peak GiB"] is None
    out = capsys.readouterr().out
    assert "| model | mode | s/frame | denoiser share | peak GPU GiB |" in out and "n/a" in out


def test_tiny_tiled_run_times_the_production_workloads_in_tiles(capsys):
    """`--tiled`: the upscaler at its native size (one tile), at 2160p and SDXL inpainting
    at 1080p, here at tiny sizes with tiles smaller than the frame."""
    rows = gpu.main(["--tiny", "--tiled", "--device", "cpu", "--modes", "warped"])
    assert [r["model"].split(" (")[0] for r in rows] == list(gpu.TILED)
    tiles = [int(r["model"].split(" (")[1].split(" tiles")[0]) for r in rows]
    assert tiles[0] == 1 and min(tiles[1:]) > 1, tiles
    assert all(r["s/frame"] > 0 and 0 < r["denoiser share"] <= 1 for r in rows)
    assert gpu.load_configs("sdxl-inpaint")["unet"]["in_channels"] == 9
