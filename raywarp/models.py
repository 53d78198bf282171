"""Diffusion models behind one small interface: loading, conditioning, x0 prediction.

This module owns everything that depends on which network is used. The sampler
(`raywarp.sampler`) owns the sampling loop and sees only a `Denoiser`:

* `space`, `channels`, `scale_factor`, `multiple`: what the sampled variable u looks
  like (pixel space or a VAE latent; image pixels per u pixel; the size multiple the
  UNet needs).
* `alphas_cumprod` (float64, CPU) and `timesteps(steps)`: the training noise schedule.
* `encode` / `decode`: images in [0, 1] <-> u (decode is differentiable).
* `condition(y, operator_info)`: everything the network needs besides u and t, built
  once per frame batch; `predict_x0(u, t, cond)`: the network's clean estimate in
  u-space, differentiable w.r.t. u (for self-guidance / DPS).
* `enable_tiling(tile, overlap)`: predict_x0 then runs the network on overlapping tiles
  of u and blends them (`raywarp.tiles`); latent models tile their VAE too.

Adapters: `PixelDenoiser` (diffusers `UNet2DModel`, unconditional or conditioned on
the classical restoration and the mask - the format of raywarp's own prior) and
`LatentDenoiser` (`UNet2DConditionModel` + `AutoencoderKL`: SD / SDXL priors, SD / SDXL
inpainting, SD x4 upscaler). `load_denoiser` picks the adapter from the folder.

Loading is local-only: raywarp never downloads at run time, so a hub id fails at once
with `ModelNotFoundError` instead of hanging on a cluster without network. Weights are
read as safetensors only (pickle files can run code on load).

`tiny_pixel_unet` / `tiny_latent_pipeline` build seeded random models of each kind, a
few hundred kB, for tests and CI.
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)

from raywarp import tiles as rtiles
from raywarp.tensors import PRECISIONS, as_batch, check_same_size

__all__ = [
    "DEFAULT_PRIOR_DIR",
    "ModelNotFoundError",
    "Denoiser",
    "PixelDenoiser",
    "LatentDenoiser",
    "load_denoiser",
    "tiny_pixel_unet",
    "tiny_latent_pipeline",
    "save_pipeline",
]

# The project's shipped prior, trained by jobs/train_prior.py; what load_denoiser("default") loads.
DEFAULT_PRIOR_DIR = Path(__file__).resolve().parent / "weights" / "prior"

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

# The noise a model was trained on, in its folder (written by raywarp.prior.save_prior).
NOISE_SPEC_FILE = "raywarp_noise.json"

# Used when a model folder has no scheduler config: the DDPM paper's linear schedule.
_DEFAULT_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}

# (tile, overlap) in pixels of pixel-space models: what measured best for the shipped prior,
# a convolutional UNet trained on 48² patches (docs/tiling.md).
PIXEL_TILING = (128, 16)

# Sequence length of the CLIP tokenizers of the SD family; zero text embeddings use it.
_TEXT_LENGTH = 77

# SDXL micro-conditioning: original size (2) + crop top-left (2) + target size (2).
SDXL_TIME_IDS = 6

_TEXT_ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))

_PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth", ".pkl"}

# Without accelerate, diffusers warns and falls back to low_cpu_mem_usage=False; ask for that directly.
_LOW_CPU_MEM = importlib.util.find_spec("accelerate") is not None


class ModelNotFoundError(ValueError):
    """A model name that is not a local directory (raywarp never downloads at run time)."""


# --------------------------------------------------------------------------- interface


class Denoiser:
    """What the sampler needs from a diffusion model; subclasses implement the network.

    Attributes: `space` ("pixel" | "latent"), `channels` (of u), `scale_factor` (image
    pixels per u pixel), `multiple` (H and W of u must be multiples of it),
    `alphas_cumprod` ((T,) float64 on CPU), `prediction_type`, `conditional` (whether
    the network sees the corrupted frame), `device` and `dtype` (of the network).
    """

    space: str
    channels: int
    scale_factor: int
    multiple: int
    conditional: bool

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, device, dtype: torch.dtype):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
        # Zero-terminal-SNR schedules end at alpha_bar = 0, where the epsilon formula
        # divides by zero; diffusers' Euler scheduler uses the same floor.
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64).clamp_min(2.0**-24)
        self.prediction_type = prediction_type
        self.device = torch.device(device)
        self.dtype = dtype
        self.tiling: tuple[int, int] | None = None  # (tile, overlap) in u pixels; None: whole frames
        self.tile_batch = 1
        self._layouts: dict[tuple[int, int], rtiles.Layout] = {}

    def accelerate(self, precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                   compile_backend: str = "inductor") -> "Denoiser":
        """Run the network faster on an accelerator; returns self.

        precision: "bf16" / "fp16": the networks run in it, their weights cast (a VAE that
        overflows in fp16, `force_upcast`, stays float32 at fp16); the sampler's state and
        the guidance arithmetic stay float32. Not autocast: over float32 weights it casts
        every weight at every call, and over cast weights it still runs every GroupNorm in
        float32 (both measured slower on an H200: docs/gpu.md). channels_last: NHWC
        memory layout, what tensor-core convolutions want. compile: wrap the network in
        `torch.compile` (opt-in: the first call of each input shape compiles) with
        `compile_backend` ("eager": traced, not compiled, for checks on a CPU).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {tuple(PRECISIONS)}, got {precision!r}")
        if PRECISIONS[precision] != self.dtype:
            self._cast(PRECISIONS[precision])
        if channels_last:
            for name in self.networks:
                getattr(self, name).to(memory_format=torch.channels_last)
        if compile:
            self.unet_call = torch.compile(self.unet, backend=compile_backend)
        return self

    def _cast(self, dtype: torch.dtype) -> None:
        """The network's weights (and what is built to feed it) as `dtype`."""
        self.unet = cast_module(self.unet, dtype)
        self.unet_call = self.unet
        self.dtype = dtype

    def default_tiling(self) -> tuple[int, int]:
        """(tile, overlap) in image pixels: the model's native size, overlapping by 1/8 of it."""
        raise NotImplementedError

    def enable_tiling(self, tile: int | None = None, overlap: int | None = None, batch: int = 1) -> "Denoiser":
        """Predict x̂0 on tiles of `tile`² image pixels overlapping by `overlap` (`raywarp.tiles`),
        `batch` crops per network call; tile 0: whole frames; None: `default_tiling()`
        (an overlap of None: 1/8 of the tile). Returns self.

        The tile is rounded down to the grid the network needs (scale_factor · multiple
        pixels); a frame that fits in one tile goes through the network whole, as untiled.
        """
        self._layouts.clear()
        self.tiling = None
        if tile is None:
            tile, default_overlap = self.default_tiling()
            overlap = default_overlap if overlap is None else overlap
        if tile == 0:
            return self
        overlap = tile // 8 if overlap is None else overlap
        s, m = self.scale_factor, self.multiple
        tile_u, overlap_u = tile // s // m * m, round(overlap / s)
        if tile_u < m:
            raise ValueError(f"tile: at least {s * m} px for this model (its grid), got {tile}")
        if overlap < 0 or 2 * overlap_u > tile_u:
            raise ValueError(f"tile_overlap: between 0 and half the tile ({tile_u * s // 2} px), got {overlap}")
        self.tiling, self.tile_batch = (tile_u, overlap_u), max(1, batch)
        return self

    def _layout(self, height: int, width: int) -> rtiles.Layout:
        """The tiles of a (height, width) u-grid, their weights on the device (made once per size)."""
        if (height, width) not in self._layouts:
            tiles = rtiles.layout(height, width, *self.tiling, multiple=self.multiple)
            self._layouts[(height, width)] = rtiles.Layout(tiles.boxes, tiles.weights.to(self.device))
        return self._layouts[(height, width)]

    def crop_condition(self, cond, boxes: list[rtiles.Box]):
        """The condition of a frame batch cut to `boxes` of u, stacked tile-major (as
        `raywarp.tiles.blend` asks)."""
        raise NotImplementedError

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def timesteps(self, steps: int) -> torch.Tensor:
        """`steps` training timesteps, descending and evenly spaced, the first T-1 ("trailing")."""
        total = self.num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
            raise ValueError(f"steps: expected an int in [1, {total}], got {steps!r}")
        # Integer arithmetic: diffusers' float arange can yield steps+1 values.
        return torch.tensor([(total * (steps - i) + steps // 2) // steps - 1 for i in range(steps)])

    def encode(self, images) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> u."""
        raise NotImplementedError

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """u -> images (B, 3, H, W) in [0, 1]; differentiable."""
        raise NotImplementedError

    def condition(self, y, operator_info: dict) -> Any:
        """The network's conditioning for one frame batch; pass the result to predict_x0.

        `y` is the raw measurement; `operator_info` has "task", "scale", "baseline"
        (B, 3, H, W) and "mask" (B, 1, H, W, 1 = observed) at output size.
        """
        raise NotImplementedError

    def predict_x0(self, u: torch.Tensor, t: int, cond) -> torch.Tensor:
        """The network's estimate of the clean u at timestep `t`; differentiable w.r.t. u."""
        t = int(t)
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"t: expected a timestep in [0, {self.num_train_timesteps}), got {t}")
        # A tensor, not an int: torch.compile specialises on ints, and would compile the
        # network again for every timestep (seen in `raywarp.bench.gpu_check`).
        # torch.full, not torch.tensor: a fill on the device, where a copy from the host
        # would wait for the device's queue to drain.
        timestep = torch.full((), t, dtype=torch.long, device=self.device)
        height, width = u.shape[-2:]
        if self.tiling is None or max(height, width) <= self.tiling[0]:
            out = self._network(u, timestep, cond).to(u.dtype)
        else:  # ε, v and x̂0 are affine in the output with u fixed: blending outputs blends x̂0
            tiles = self._layout(height, width)
            out = rtiles.blend(
                lambda boxes: self._network(torch.cat([box.crop(u) for box in boxes]), timestep,
                                            self.crop_condition(cond, boxes)).to(u.dtype),
                (u.shape[0], self.channels, height, width), tiles, per_call=max(1, self.tile_batch // u.shape[0]))
        a = float(self.alphas_cumprod[t])
        if self.prediction_type == "epsilon":
            return (u - math.sqrt(1 - a) * out) / math.sqrt(a)
        if self.prediction_type == "v_prediction":
            return math.sqrt(a) * u - math.sqrt(1 - a) * out
        return out

    def _network(self, u: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The raw network output (epsilon, v or x0 according to prediction_type) at the
        timestep `t` (a 0-d integer tensor on the device)."""
        raise NotImplementedError


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module` with its weights as `dtype` (in place)."""
    # Not module.to(dtype): diffusers 0.42 warns on any dtype cast there, even with no module to keep float32.
    return {torch.float32: module.float, torch.float16: module.half, torch.bfloat16: module.bfloat16}[dtype]()


def _network_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


def _missing_condition() -> ValueError:
    return ValueError("cond: this model is conditional; pass the value returned by condition()")


# --------------------------------------------------------------------------- pixel models


class PixelDenoiser(Denoiser):
    """A diffusers `UNet2DModel` on images in [-1, 1].

    in_channels 3: unconditional (`condition` returns None; the sampler enforces the
    measurement). in_channels 7: input cat(u, baseline * 2 - 1, mask) - raywarp's own
    prior, fine-tuned with the corrupted frame as in Warped Diffusion.
    """

    space = "pixel"
    channels = 3
    scale_factor = 1

    def __init__(self, unet: UNet2DModel, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        cfg = unet.config
        if cfg.in_channels not in (3, 7):
            raise ValueError(
                f"UNet2DModel in_channels={cfg.in_channels}: raywarp supports 3 (unconditional) "
                "or 7 (u + baseline RGB + mask)"
            )
        # Learned-variance models output 6 channels, the mean prediction first.
        if cfg.out_channels not in (3, 6):
            raise ValueError(f"UNet2DModel out_channels={cfg.out_channels}: expected 3 (or 6 with learned variance)")
        super().__init__(alphas_cumprod, prediction_type, *_network_device_dtype(unet))
        self.unet = self.unet_call = unet
        self.networks = ("unet",)
        self.conditional = cfg.in_channels == 7
        self.multiple = 2 ** (len(cfg.block_out_channels) - 1)

    def encode(self, images) -> torch.Tensor:
        return as_batch(images, "images", channels=3).to(self.device) * 2 - 1

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        return ((u + 1) / 2).clamp(0, 1)

    def condition(self, y, operator_info: dict) -> torch.Tensor | None:
        if not self.conditional:
            return None
        baseline = as_batch(operator_info["baseline"], "operator_info['baseline']", channels=3)
        mask = as_batch(operator_info["mask"], "operator_info['mask']", channels=1)
        check_same_size(baseline=baseline, mask=mask)
        return torch.cat([baseline * 2 - 1, mask], 1).to(self.device, self.dtype)

    def default_tiling(self) -> tuple[int, int]:
        return PIXEL_TILING

    def crop_condition(self, cond, boxes: list[rtiles.Box]) -> torch.Tensor | None:
        return None if cond is None else torch.cat([box.crop(cond) for box in boxes])

    def _network(self, u: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        x = u.to(self.dtype)
        if self.conditional:
            if cond is None:
                raise _missing_condition()
            check_same_size(u=u, cond=cond)
            x = torch.cat([x, cond], 1)
        return self.unet_call(x, t).sample[:, :3]


# --------------------------------------------------------------------------- latent models


class LatentDenoiser(Denoiser):
    """A diffusers `UNet2DConditionModel` + `AutoencoderKL` (Stable Diffusion family).

    `variant`, from the UNet's in_channels with c = the VAE's latent channels:
    c -> "prior" (plain SD / SDXL); 2c + 1 -> "inpaint" (input cat(u, hole mask at latent
    size with 1 = HOLE as diffusers' inpainting pipelines expect, VAE latent of the
    masked image)); c + 3 -> "upscale" (SD x4 upscaler: u lives at the low-res size,
    input cat(u, low-res frame in [-1, 1]), class_labels = `noise_level`; the low-res
    frame is passed without augmentation noise so the conditioning is deterministic
    across frames). SDXL (addition_embed_type "text_time") also gets pooled text
    embeddings and time_ids (original size, crop (0, 0), target size).

    `prompt_embeds` (1, L, D) / `pooled_prompt_embeds` (1, P) are the empty prompt's
    text conditioning; None gives zeros of length 77 and the UNet's cross_attention_dim
    (and pooled width), what a folder without a text encoder can offer.
    """

    space = "latent"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        alphas_cumprod: torch.Tensor,
        prediction_type: str = "epsilon",
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        noise_level: int = 20,
    ):
        ucfg, vcfg = unet.config, vae.config
        latent = vcfg.latent_channels
        variants = {latent: "prior", 2 * latent + 1: "inpaint", latent + 3: "upscale"}
        if ucfg.in_channels not in variants:
            raise ValueError(
                f"UNet2DConditionModel in_channels={ucfg.in_channels}: with {latent} latent channels raywarp "
                f"supports {latent} (prior), {2 * latent + 1} (inpainting) or {latent + 3} (x4 upscaler)"
            )
        device, dtype = _network_device_dtype(unet)
        super().__init__(alphas_cumprod, prediction_type, device, dtype)
        self.unet, self.vae = unet, vae
        self.unet_call = unet
        self.networks = ("unet", "vae")
        self.variant = variants[ucfg.in_channels]
        self.conditional = self.variant != "prior"
        self.channels = latent
        self.scale_factor = 2 ** (len(vcfg.block_out_channels) - 1)
        self.multiple = 2 ** (len(ucfg.block_out_channels) - 1)
        self.noise_level = noise_level
        self._tile_kwargs: dict[tuple[int, int, int], dict] = {}  # crop_condition's, by (crops, height, width)
        self.sdxl = ucfg.addition_embed_type == "text_time"
        self._vae_dtype = _network_device_dtype(vae)[1]
        self._shift = vcfg.shift_factor or 0.0
        if prompt_embeds is None:
            prompt_embeds = torch.zeros(1, _TEXT_LENGTH, ucfg.cross_attention_dim)
        self.prompt_embeds = prompt_embeds.to(device, dtype)
        self.pooled_prompt_embeds = None
        if self.sdxl:
            if pooled_prompt_embeds is None:
                width = ucfg.projection_class_embeddings_input_dim - SDXL_TIME_IDS * ucfg.addition_time_embed_dim
                pooled_prompt_embeds = torch.zeros(1, width)
            self.pooled_prompt_embeds = pooled_prompt_embeds.to(device, dtype)

    def _cast(self, dtype: torch.dtype) -> None:
        super()._cast(dtype)
        self._tile_kwargs.clear()
        if dtype != torch.float16 or not self.vae.config.force_upcast:
            self.vae = cast_module(self.vae, dtype)
            self._vae_dtype = dtype
        self.prompt_embeds = self.prompt_embeds.to(dtype)
        if self.pooled_prompt_embeds is not None:
            self.pooled_prompt_embeds = self.pooled_prompt_embeds.to(dtype)

    def _vae_encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents in the UNet's dtype (distribution mean: deterministic)."""
        mean = self.vae.encode(x.to(self.device, self._vae_dtype)).latent_dist.mean
        return ((mean - self._shift) * self.vae.config.scaling_factor).to(self.dtype)

    def _check_divisible(self, images: torch.Tensor, name: str) -> None:
        if images.shape[-2] % self.scale_factor or images.shape[-1] % self.scale_factor:
            raise ValueError(
                f"{name}: height and width must be multiples of the VAE factor {self.scale_factor}, "
                f"got {tuple(images.shape)}"
            )

    def encode(self, images) -> torch.Tensor:
        images = as_batch(images, "images", channels=3)
        self._check_divisible(images, "images")
        return self._vae_encode(images * 2 - 1).to(images.dtype)

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        z = u / self.vae.config.scaling_factor + self._shift
        x = self.vae.decode(z.to(self._vae_dtype)).sample
        return ((x + 1) / 2).clamp(0, 1).to(u.dtype)

    def condition(self, y, operator_info: dict) -> dict:
        baseline = as_batch(operator_info["baseline"], "operator_info['baseline']", channels=3)
        self._check_divisible(baseline, "operator_info['baseline']")
        b, _, h, w = baseline.shape
        extra = None
        if self.variant == "inpaint":
            mask = as_batch(operator_info["mask"], "operator_info['mask']", channels=1)
            check_same_size(baseline=baseline, mask=mask)
            # A latent cell with any missing pixel is a hole (max-pool of 1 - mask).
            hole = F.max_pool2d(1 - mask, self.scale_factor).to(self.device, self.dtype)
            # Holes are 0 in [-1, 1], as in diffusers' inpainting pipelines.
            extra = torch.cat([hole, self._vae_encode((baseline * 2 - 1) * mask)], 1)
        elif self.variant == "upscale":
            if operator_info["scale"] != self.scale_factor:
                raise ValueError(
                    f"operator_info['scale']: the x{self.scale_factor} upscaler model needs scale "
                    f"{self.scale_factor}, got {operator_info['scale']}"
                )
            low = as_batch(y, "y", channels=3)
            if tuple(low.shape[-2:]) != (h // self.scale_factor, w // self.scale_factor):
                raise ValueError(
                    f"y: expected low-res frames of size {(h // self.scale_factor, w // self.scale_factor)}, "
                    f"got {tuple(low.shape)}"
                )
            extra = (low * 2 - 1).to(self.device, self.dtype)
        return {"extra": extra, "kwargs": self._kwargs(b, h, w)}

    def _kwargs(self, b: int, h: int, w: int) -> dict[str, Any]:
        """The UNet's keyword conditioning for b images of h × w pixels: the empty prompt,
        SDXL's size micro-conditioning, the upscaler's noise level."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.prompt_embeds.expand(b, -1, -1)}
        if self.sdxl:
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.pooled_prompt_embeds.expand(b, -1),
                "time_ids": time_ids.expand(b, -1),
            }
        if self.variant == "upscale":
            kwargs["class_labels"] = torch.full((b,), self.noise_level, device=self.device, dtype=torch.long)
        return kwargs

    def default_tiling(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        tile = (min(size) if isinstance(size, (list, tuple)) else size) * self.scale_factor
        return tile, tile // 8

    def enable_tiling(self, tile: int | None = None, overlap: int | None = None, batch: int = 1) -> "LatentDenoiser":
        """Tiles for the UNet as `Denoiser.enable_tiling`, and diffusers' own tiling for the VAE
        with tiles of the same size, so no part of a step holds a whole frame's activations
        and a frame of one tile is encoded and decoded whole, as untiled."""
        super().enable_tiling(tile, overlap, batch)
        self._tile_kwargs.clear()
        if self.tiling is None:
            self.vae.disable_tiling()
            return self
        self.vae.enable_tiling()
        self.vae.tile_latent_min_size = self.tiling[0]
        self.vae.tile_sample_min_size = self.tiling[0] * self.scale_factor
        return self

    def crop_condition(self, cond, boxes: list[rtiles.Box]) -> dict:
        n = cond["kwargs"]["encoder_hidden_states"].shape[0] * len(boxes)
        extra = None if cond["extra"] is None else torch.cat([box.crop(cond["extra"]) for box in boxes])
        key = (n, boxes[0].height * self.scale_factor, boxes[0].width * self.scale_factor)
        if key not in self._tile_kwargs:  # made once: SDXL's time_ids are a copy from the host
            self._tile_kwargs[key] = self._kwargs(*key)
        return {"extra": extra, "kwargs": self._tile_kwargs[key]}

    def _network(self, u: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if cond is None:
            raise _missing_condition()
        x = u.to(self.dtype)
        if cond["extra"] is not None:
            check_same_size(u=u, cond=cond["extra"])
            x = torch.cat([x, cond["extra"]], 1)
        return self.unet_call(x, t, **cond["kwargs"]).sample


# --------------------------------------------------------------------------- loading


def _resolve(name_or_path: str | Path) -> Path:
    if name_or_path == "default":
        if not _is_model_dir(DEFAULT_PRIOR_DIR):
            raise FileNotFoundError(
                f"the default prior is not installed at {DEFAULT_PRIOR_DIR}; train it with jobs/train_prior.py "
                "(or pass a local model directory)"
            )
        return DEFAULT_PRIOR_DIR
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"{name_or_path!r} is not a local directory. raywarp never downloads models at run time: pass a "
            "local diffusers folder, e.g. one made on a connected machine with "
            f"`huggingface-cli download {name_or_path} --local-dir DIR` and copied here."
        )
    return path


def _is_model_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "config.json").is_file()


def _class_name(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no config.json")
    return json.loads(config.read_text()).get("_class_name")


def _require_safetensors(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{folder}: only pickle weights ({', '.join(pickles)}); raywarp loads .safetensors only, since "
            "pickle files can run code when loaded. Convert them on a trusted machine, e.g. "
            "`Model.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`."
        )
    raise FileNotFoundError(f"{folder}: no .safetensors weights")


def _load(cls, folder: Path, device, dtype: torch.dtype):
    name = _class_name(folder)
    if name != cls.__name__:
        raise ValueError(f"{folder}: expected a {cls.__name__}, config says {name!r}")
    _require_safetensors(folder)
    model = cls.from_pretrained(
        folder, use_safetensors=True, local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=_LOW_CPU_MEM
    )
    return model.to(device).eval().requires_grad_(False)


def _schedule(config_path: Path | None) -> tuple[torch.Tensor, str]:
    """(alphas_cumprod, prediction_type) of a scheduler config (any diffusers DDPM-family class)."""
    config = json.loads(config_path.read_text()) if config_path is not None else _DEFAULT_SCHEDULE
    scheduler = DDIMScheduler.from_config(config)
    return scheduler.alphas_cumprod, scheduler.config.prediction_type


def _empty_prompt(root: Path, sdxl: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Empty-prompt embeddings from the folder's own text encoder(s), or (None, None) for zeros."""
    pairs = [(enc, tok) for enc, tok in _TEXT_ENCODERS if (root / enc).is_dir() and (root / tok).is_dir()]
    if not pairs:
        return None, None
    try:
        import transformers  # lazy: only folders that ship a text encoder need it
    except ImportError:
        warnings.warn(
            f"{root} has a text encoder but transformers is not installed; using zero text embeddings",
            stacklevel=3,
        )
        return None, None
    index = json.loads((root / "model_index.json").read_text())
    hidden, pooled = [], None
    with torch.no_grad():  # one forward pass on CPU in float32, then moved by LatentDenoiser
        for enc, tok in pairs:
            _require_safetensors(root / enc)
            tokenizer = getattr(transformers, index[tok][1]).from_pretrained(root / tok, local_files_only=True)
            encoder = getattr(transformers, index[enc][1]).from_pretrained(
                root / enc, local_files_only=True, use_safetensors=True
            )
            ids = tokenizer(
                "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            out = encoder(ids, output_hidden_states=True)
            # As the diffusers pipelines: SDXL uses both encoders' penultimate layers and pools
            # from the projection encoder (2-D first output); SD uses the last hidden state.
            hidden.append(out.hidden_states[-2] if sdxl else out[0])
            if sdxl and out[0].dim() == 2:
                pooled = out[0]
    return torch.cat(hidden, -1), pooled


def load_denoiser(name_or_path: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> Denoiser:
    """Load a local diffusers model as a `Denoiser`; never downloads.

    `name_or_path`: "default" (raywarp's prior at `DEFAULT_PRIOR_DIR`), a diffusers
    pipeline folder (model_index.json, unet/, scheduler/, vae/ for latent models,
    optional text_encoder/ + tokenizer/), or a bare UNet2DModel folder (config.json +
    safetensors, scheduler_config.json beside it or in scheduler/). Without a scheduler
    config the linear DDPM schedule (1000 steps, 1e-4..0.02, epsilon) is assumed.
    Raises ModelNotFoundError for anything that is not an existing directory.
    """
    root = _resolve(name_or_path)
    if (root / "model_index.json").is_file():
        unet_dir = root / "unet"
        candidates = [root / "scheduler" / "scheduler_config.json"]
    elif (root / "config.json").is_file():
        unet_dir = root
        candidates = [root / "scheduler_config.json", root / "scheduler" / "scheduler_config.json"]
    else:
        raise ValueError(
            f"{root}: not a diffusers model folder (expected model_index.json for a pipeline "
            "or config.json for a UNet2DModel)"
        )
    alphas_cumprod, prediction_type = _schedule(next((c for c in candidates if c.is_file()), None))
    kind = _class_name(unet_dir)
    if kind == "UNet2DModel":
        return PixelDenoiser(_load(UNet2DModel, unet_dir, device, dtype), alphas_cumprod, prediction_type)
    if kind == "UNet2DConditionModel" and (root / "vae").is_dir():
        unet = _load(UNet2DConditionModel, unet_dir, device, dtype)
        # The SDXL VAE overflows in float16; diffusers keeps such VAEs (force_upcast) in float32.
        vae_config = json.loads((root / "vae" / "config.json").read_text())
        # diffusers' default is True: a config without the key (the x4 upscaler's) is upcast too.
        vae_dtype = torch.float32 if dtype == torch.float16 and vae_config.get("force_upcast", True) else dtype
        vae = _load(AutoencoderKL, root / "vae", device, vae_dtype)
        prompt, pooled = _empty_prompt(root, unet.config.addition_embed_type == "text_time")
        return LatentDenoiser(unet, vae, alphas_cumprod, prediction_type, prompt, pooled)
    raise ValueError(
        f"{root}: unsupported model ({kind!r} in {unet_dir.name}/config.json); raywarp supports UNet2DModel, "
        "or UNet2DConditionModel with an AutoencoderKL in vae/"
    )


def noise_spec(name_or_path: str | Path) -> dict:
    """The noise a model folder was trained on: {"noise": "gp", "length_scale": ε (u-space
    pixels), "num_features": J} or {"noise": "white"}, from its `raywarp_noise.json`. A
    folder without one was trained on white noise, as every public checkpoint was."""
    path = _resolve(name_or_path) / NOISE_SPEC_FILE
    if not path.is_file():
        return {"noise": "white"}
    spec = json.loads(path.read_text())
    kind = spec.get("noise", "gp" if "length_scale" in spec else "white")
    if kind not in ("gp", "white"):
        raise ValueError(f"{path}: noise must be 'gp' or 'white', got {kind!r}")
    if kind == "white":
        return {"noise": "white"}
    return {"noise": "gp", "length_scale": float(spec["length_scale"]), "num_features": int(spec.get("num_features", 3000))}


def geometry(name_or_path: str | Path) -> tuple[int, int]:
    """(scale_factor, multiple) of a model folder, from its configs alone (no weights).

    The model's u-space is scale_factor times smaller than its images (1 for pixel models,
    the VAE's factor for latent ones), and image sides must be multiples of
    scale_factor · multiple. Lets CPU stages plan in u-space without loading the model.
    """
    root = _resolve(name_or_path)
    unet_dir = root / "unet" if (root / "model_index.json").is_file() else root
    unet = json.loads((unet_dir / "config.json").read_text())
    vae = root / "vae" / "config.json"
    scale = 2 ** (len(json.loads(vae.read_text())["block_out_channels"]) - 1) if vae.is_file() else 1
    return scale, 2 ** (len(unet["block_out_channels"]) - 1)


# --------------------------------------------------------------------------- tiny test models


def _seeded(build, seed: int):
    """Run `build()` under `seed` without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_pixel_unet(conditional: bool, seed: int = 0) -> UNet2DModel:
    """A seeded random UNet2DModel (3 or 7 input channels) that runs in milliseconds at 32x32."""
    return _seeded(
        lambda: UNet2DModel(
            sample_size=32,
            in_channels=7 if conditional else 3,
            out_channels=3,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        ),
        seed,
    )


# kind -> (pipeline class named in model_index.json, scheduler class and settings like the real model's)
_TINY_PIPELINES = {
    "sd": ("StableDiffusionPipeline", PNDMScheduler, {"skip_prk_steps": True}),
    "sdxl": ("StableDiffusionXLPipeline", EulerDiscreteScheduler, {}),
    "inpaint": ("StableDiffusionInpaintPipeline", DDIMScheduler, {}),
    "upscale": ("StableDiffusionUpscalePipeline", DDIMScheduler, {"prediction_type": "v_prediction"}),
}


def tiny_latent_pipeline(kind: str, path, seed: int = 0) -> Path:
    """Write a tiny seeded diffusers folder (unet/, vae/, scheduler/, model_index.json) to `path`.

    `kind`: "sd" | "sdxl" | "inpaint" | "upscale"; no text encoder, so the zero text
    embeddings are used. The upscaler's VAE has factor 4 like the real x4 upscaler's.
    Returns the folder, loadable with `load_denoiser`.
    """
    if kind not in _TINY_PIPELINES:
        raise ValueError(f"kind: expected one of {tuple(_TINY_PIPELINES)}, got {kind!r}")
    pipeline, scheduler_cls, scheduler_kwargs = _TINY_PIPELINES[kind]
    unet_kwargs: dict[str, Any] = {"in_channels": {"sd": 4, "sdxl": 4, "inpaint": 9, "upscale": 7}[kind]}
    if kind == "sdxl":
        unet_kwargs.update(
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 48
        )
    if kind == "upscale":
        unet_kwargs["num_class_embeds"] = 1000
    vae_blocks = (16, 32, 32) if kind == "upscale" else (32, 64)

    unet = _seeded(
        lambda: UNet2DConditionModel(
            sample_size=16,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
            **unet_kwargs,
        ),
        seed,
    )
    vae = _seeded(
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
            up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
            block_out_channels=vae_blocks,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
            scaling_factor=0.08333 if kind == "upscale" else 0.18215,
        ),
        seed + 1,
    )
    scheduler = scheduler_cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **scheduler_kwargs)

    return save_pipeline(path, pipeline, unet, vae, {"_class_name": scheduler_cls.__name__, **scheduler.config})


def save_pipeline(path, pipeline: str, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: dict) -> Path:
    """Write a latent diffusers folder (unet/, vae/ as safetensors, scheduler/, model_index.json
    naming `pipeline`) that `load_denoiser` loads; `scheduler`: its config, "_class_name" included."""
    path = Path(path)
    unet.save_pretrained(path / "unet", safe_serialization=True)
    vae.save_pretrained(path / "vae", safe_serialization=True)
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "_class_name": pipeline,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", scheduler["_class_name"]],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
