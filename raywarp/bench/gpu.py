"""GPU benchmark: sampler speed with architecture-true, random-weight UNets of real checkpoints.

    python -m raywarp.bench.gpu [--models sd-x4-upscaler sdxl-base] [--modes ...] [--frames 8] [--steps 20]
                                [--batch-size 8] [--device cuda|cpu] [--precision fp32|bf16|fp16]
                                [--[no-]channels-last] [--compile] [--tiny] [--tiled]

Owns the models' shipped configs (configs/: the public unet, vae and scheduler configs
of stabilityai/stable-diffusion-x4-upscaler and stabilityai/stable-diffusion-xl-base-1.0,
no weights) and the timing of `sample_clip` on them. Each model is built from its
configs with seeded random weights, so the network costs what the real one costs
without downloading it: the x4 upscaler (the "upscale" variant, u-space at the
low-resolution size) on SR x4 of 128² frames to 512², SDXL base (a "prior") on SR x4
to 1024² (latent 128²). The frames are a photograph panned by a constant translation;
the flows, on each model's u-space grid, are that translation.

Per model and sampling mode: seconds per frame of one `sample_clip` call, after a
one-step warm-up call (cuDNN autotuning, compilation); the share of that wall time
spent inside the denoiser network, forward and the self-guidance backward through it
(CUDA events on the GPU, read after the final synchronize, so no step is synchronised);
the peak GPU memory allocated. `--tiled` times production sizes instead, tiled at the
model's default tile (`raywarp.tiles`): the x4 upscaler at 540p → 2160p and SDXL
inpainting (SDXL base's UNet with 9 input channels) at 1080p, beside the upscaler's
native 512², whose peak memory the 2160p run is held to. `--tiny` narrows every width of the same configs (block
types, attention layout, class and text-time embeddings, VAE depth kept) and shrinks
the sizes so that the whole benchmark runs on a CPU in seconds: the test suite's smoke run.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import platform
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from raywarp import inverse, synthetic
from raywarp import tiles as rtiles
from raywarp.models import SDXL_TIME_IDS, LatentDenoiser, cast_module, save_pipeline
from raywarp.sampler import MODES, SamplerConfig, sample_clip
from raywarp.tensors import PRECISIONS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MODELS = ("sd-x4-upscaler", "sdxl-base")
SCALE = 4  # SR x4 for both models: the upscaler's native factor
# Output (high-resolution) side: the upscaler's native 128² -> 512², SDXL's native 1024².
OUTPUT_SIDES = {"sd-x4-upscaler": 512, "sdxl-base": 1024}
TINY_OUTPUT_SIDES = {"sd-x4-upscaler": 32, "sdxl-base": 32}  # the smallest multiples of VAE factor x UNet depth
# --tiled: production sizes through tiled denoising at the model's default tile, the
# upscaler's native size first (one tile: the reference for peak memory). Output sizes
# padded to the model's multiple as the pipeline pads (2160 -> 2176, 1080 -> 1088).
# name -> (model, task, output (H, W), --tiny output (H, W), --tiny tile in output pixels)
TILED = {
    "sd-x4-upscaler 128²→512²": ("sd-x4-upscaler", "sr", (512, 512), (32, 32), 32),
    "sd-x4-upscaler 540p→2160p": ("sd-x4-upscaler", "sr", (2176, 3840), (64, 96), 32),
    "sdxl-inpaint 1080p": ("sdxl-inpaint", "inpaint", (1088, 1920), (64, 96), 64),
}
HOLE = "rect:0.4,0.35,0.6,0.65"  # the inpainting workload's hole
# Content motion per frame in output pixels: a few u-space pixels over a clip, sub-pixel per frame.
VELOCITY = (2.0, 1.0)

# --tiny widths: the first block's (later blocks keep the real ratios), GroupNorm groups
# dividing them all, the text token and pooled text width, SDXL's per-time-id embedding.
TINY_WIDTH = 32
TINY_GROUPS = 8
TINY_TEXT = 32
TINY_TIME_EMBED = 8


# --------------------------------------------------------------------------- configs


def load_configs(model: str, tiny: bool = False) -> dict[str, dict]:
    """{"unet", "vae", "scheduler": config dict} of a shipped model; `tiny`: narrowed."""
    if model not in MODELS + ("sdxl-inpaint",):
        raise ValueError(f"model: expected one of {MODELS + ('sdxl-inpaint',)}, got {model!r}")
    # SDXL inpainting (diffusers/stable-diffusion-xl-1.0-inpainting-0.1) is SDXL base's UNet taking
    # 9 channels: the latent, the hole mask and the masked image's latent.
    folder = "sdxl-base" if model == "sdxl-inpaint" else model
    configs = {part: json.loads((CONFIG_DIR / folder / f"{part}.json").read_text()) for part in ("unet", "vae", "scheduler")}
    if model == "sdxl-inpaint":
        configs["unet"]["in_channels"] = 9
    if tiny:
        configs["unet"], configs["vae"] = tiny_unet_config(configs["unet"]), tiny_vae_config(configs["vae"])
    return configs


def _narrowed(widths: list[int]) -> list[int]:
    return [w * TINY_WIDTH // widths[0] for w in widths]


def _fitting_heads(heads, widths: list[int]):
    """The most attention heads, up to the real count, that divide each narrowed width."""
    if isinstance(heads, int):
        return max(n for n in range(1, heads + 1) if all(w % n == 0 for w in widths))
    return [max(n for n in range(1, h + 1) if w % n == 0) for h, w in zip(heads, widths)]


def tiny_unet_config(config: dict) -> dict:
    """The same UNet narrowed to run in milliseconds: every structural field kept."""
    widths = _narrowed(config["block_out_channels"])
    layers = config.get("transformer_layers_per_block", 1)
    tiny = {
        **config,
        "block_out_channels": widths,
        "layers_per_block": 1,
        "transformer_layers_per_block": [1] * len(layers) if isinstance(layers, list) else 1,
        "norm_num_groups": TINY_GROUPS,
        "attention_head_dim": _fitting_heads(config["attention_head_dim"], widths),
        "cross_attention_dim": TINY_TEXT,
    }
    if config.get("num_attention_heads") is not None:
        tiny["num_attention_heads"] = _fitting_heads(config["num_attention_heads"], widths)
    if config.get("addition_embed_type") == "text_time":
        # LatentDenoiser reads the pooled text width back as this minus the time ids' part.
        tiny["addition_time_embed_dim"] = TINY_TIME_EMBED
        tiny["projection_class_embeddings_input_dim"] = TINY_TEXT + SDXL_TIME_IDS * TINY_TIME_EMBED
    return tiny


def tiny_vae_config(config: dict) -> dict:
    """The same VAE (depth, so its factor; latent channels; scaling) with narrow blocks."""
    return {**config, "block_out_channels": _narrowed(config["block_out_channels"]), "layers_per_block": 1,
            "norm_num_groups": TINY_GROUPS}


# --------------------------------------------------------------------------- models


def _random_weights(build, seed: int, device: torch.device):
    """`build()` created on `device` with weights drawn from `seed`; the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        return build()


def build_denoiser(configs: dict[str, dict], device, dtype: torch.dtype, seed: int = 0) -> LatentDenoiser:
    """A `LatentDenoiser` of the configs' UNet and VAE with seeded random weights.

    Initialised on `device` itself (SDXL's 2.6 B parameters would take minutes on a CPU);
    device "meta" builds the structure without memory. A VAE with force_upcast (diffusers'
    default, which the x4 upscaler's config leaves implicit) stays float32 when the UNet is
    float16, as diffusers' pipelines keep it.
    """
    device = torch.device(device)
    unet = _random_weights(lambda: UNet2DConditionModel.from_config(configs["unet"]), seed, device)
    vae = _random_weights(lambda: AutoencoderKL.from_config(configs["vae"]), seed + 1, device)
    vae_dtype = torch.float32 if dtype == torch.float16 and vae.config.force_upcast else dtype
    unet = cast_module(unet, dtype).eval().requires_grad_(False)
    vae = cast_module(vae, vae_dtype).eval().requires_grad_(False)
    # Any DDPM-family scheduler config gives the training schedule, as in models._schedule.
    scheduler = DDIMScheduler.from_config(configs["scheduler"])
    return LatentDenoiser(unet, vae, scheduler.alphas_cumprod, scheduler.config.prediction_type)


PIPELINES = {"sd-x4-upscaler": "StableDiffusionUpscalePipeline", "sdxl-base": "StableDiffusionXLPipeline"}


def save_random_pipeline(model: str, path, tiny: bool = False, device="cpu", dtype=torch.float32) -> Path:
    """A loadable diffusers folder (`raywarp run --model PATH`) of the model's real configs
    with seeded random weights, built on `device` and stored as `dtype`."""
    configs = load_configs(model, tiny)
    denoiser = build_denoiser(configs, device, dtype)
    path = save_pipeline(path, PIPELINES[model], denoiser.unet, denoiser.vae, configs["scheduler"])
    del denoiser
    return path


# --------------------------------------------------------------------------- workload


def panned_video(size: tuple[int, int], frames: int) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1]: a held-out photograph panned by VELOCITY output pixels per
    frame, zoomed to fill the frame."""
    photo = synthetic.HELDOUT_PHOTOS[0]
    zoom = 0.9 * min(synthetic.load_photo(photo).shape[:2]) / max(size)
    video, _ = synthetic.affine_video(photo, frames, size, synthetic.affine_motion(size, shift=VELOCITY), zoom=zoom)
    return video


def clip_inputs(denoiser: LatentDenoiser, output_size: int | tuple[int, int], frames: int):
    """(LR frames (T, 3, H/4, W/4), forward and backward flows (T-1, 2, h, w) on the u-space grid)
    of `panned_video` at `output_size` (a side, or (H, W)); for a translation the flow is
    that vector everywhere (the u grid's pixels are scale_factor output pixels)."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    observations = inverse.SuperResolution(SCALE, "bicubic").degrade(panned_video(size, frames))
    grid = (size[0] // denoiser.scale_factor, size[1] // denoiser.scale_factor)
    step = torch.tensor(VELOCITY).view(1, 2, 1, 1) / denoiser.scale_factor
    forward = step.expand(frames - 1, 2, *grid).clone()
    return observations, forward, -forward


# --------------------------------------------------------------------------- timing


class _Stamp(torch.autograd.Function):
    """Identity whose backward calls `stamp()`: marks when a gradient passes this point."""

    @staticmethod
    def forward(ctx, x, stamp):
        ctx.stamp = stamp
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.stamp()
        return grad, None


class NetworkTimer:
    """Wraps `denoiser.unet_call`: the time spent in the network, forward and backward.

    The self-guidance gradient runs backward through the network outside `unet_call`;
    stamps on its input and output catch that part too. On CUDA the clock is a recorded
    event (nothing synchronises); read `seconds()` after synchronising.
    """

    def __init__(self, denoiser):
        self.network = denoiser.unet_call
        self.cuda = denoiser.device.type == "cuda"
        self.intervals: list[tuple] = []
        denoiser.unet_call = self

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def __call__(self, x, *args, **kwargs):
        backward_start = []
        x = _Stamp.apply(x, lambda: self.intervals.append((backward_start.pop(), self._now())))
        start = self._now()
        out = self.network(x, *args, **kwargs)
        out.sample = _Stamp.apply(out.sample, lambda: backward_start.append(self._now()))
        self.intervals.append((start, self._now()))
        return out

    def reset(self) -> None:
        self.intervals.clear()

    def seconds(self) -> float:
        if self.cuda:
            return sum(a.elapsed_time(b) for a, b in self.intervals) / 1000
        return sum(b - a for a, b in self.intervals)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_mode(denoiser, timer: NetworkTimer, inputs, mode: str, steps: int, batch_size: int, op=None) -> dict:
    """One warm-up call of one step, then one timed `sample_clip` call (SR ×4 unless `op`)."""
    observations, forward, backward = inputs
    op = op or inverse.SuperResolution(SCALE, "bicubic")
    device = denoiser.device

    def run(n):
        config = SamplerConfig(mode=mode, steps=n, batch_size=batch_size)
        return sample_clip(denoiser, op, observations, forward, backward, seed=0, config=config, device=device)

    run(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer.reset()
    _synchronize(device)
    start = time.perf_counter()
    run(steps)
    _synchronize(device)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"s/frame": wall / observations.shape[0], "denoiser share": timer.seconds() / wall, "peak GiB": peak}


def native_workload(model: str, tiny: bool, device, precision: str, channels_last: bool = True, compile: bool = False,
                    frames: int = 8):
    """(denoiser, clip inputs, operator (None: SR ×4), label) of `model` at its native size, untiled."""
    denoiser = build_denoiser(load_configs(model, tiny), device, PRECISIONS[precision])
    denoiser.accelerate(precision=precision, channels_last=channels_last, compile=compile)
    side = (TINY_OUTPUT_SIDES if tiny else OUTPUT_SIDES)[model]
    return denoiser, clip_inputs(denoiser, side, frames), None, model


def tiled_workload(name: str, tiny: bool, device, precision: str, channels_last: bool = True, compile: bool = False,
                   frames: int = 8, batch_size: int = SamplerConfig.batch_size):
    """(denoiser tiled at its default tile (--tiny: a small one), clip inputs, operator, label)
    of the TILED workload `name`."""
    model, task, size, tiny_size, tiny_tile = TILED[name]
    size = tiny_size if tiny else size
    denoiser = build_denoiser(load_configs(model, tiny), device, PRECISIONS[precision])
    denoiser.accelerate(precision=precision, channels_last=channels_last, compile=compile)
    denoiser.enable_tiling(tiny_tile if tiny else None, batch=batch_size)
    observations, forward, backward = clip_inputs(denoiser, size, frames)
    op = inverse.SuperResolution(SCALE, "bicubic")
    if task == "inpaint":
        op = inverse.Inpainting(inverse.parse_mask(HOLE, size, frames))
        observations = op.degrade(panned_video(size, frames))
    tiles = len(rtiles.layout(*forward.shape[-2:], *denoiser.tiling, denoiser.multiple).boxes)
    label = f"{name} ({tiles} tiles of {denoiser.tiling[0] * denoiser.scale_factor} px)"
    return denoiser, (observations, forward, backward), op, label


def benchmark(args) -> list[dict]:
    """Every mode on each workload: the models at native size, or (--tiled) the TILED ones."""
    device = torch.device(args.device)
    common = dict(tiny=args.tiny, device=device, precision=args.precision, channels_last=args.channels_last,
                  compile=args.compile, frames=args.frames)
    if args.tiled:
        workloads = [functools.partial(tiled_workload, name, batch_size=args.batch_size, **common) for name in TILED]
    else:
        workloads = [functools.partial(native_workload, model, **common) for model in args.models]
    rows = []
    for workload in workloads:  # built one at a time, each freed before the next
        denoiser, inputs, op, label = workload()
        timer = NetworkTimer(denoiser)
        for mode in args.modes:
            try:
                row = time_mode(denoiser, timer, inputs, mode, args.steps, args.batch_size, op)
            except torch.OutOfMemoryError:  # a row saying so beats losing the other modes' rows
                torch.cuda.empty_cache()
                row = {"s/frame": math.nan, "denoiser share": math.nan, "peak GiB": None}
            rows.append({"model": label, "mode": mode, **row})
            print(format_table(rows[-1:], header=len(rows) == 1), flush=True)
        del denoiser, timer, inputs
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_table(rows: list[dict], header: bool = True) -> str:
    lines = ["| model | mode | s/frame | denoiser share | peak GPU GiB |", "|---|---|---|---|---|"] if header else []
    for r in rows:
        if math.isnan(r["s/frame"]):
            lines.append(f"| {r['model']} | {r['mode']} | out of memory | | |")
            continue
        peak = "n/a" if r["peak GiB"] is None else f"{r['peak GiB']:.1f}"
        lines.append(f"| {r['model']} | {r['mode']} | {r['s/frame']:.3f} | {r['denoiser share']:.0%} | {peak} |")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine() or 'CPU'} (threads: {torch.get_num_threads()})"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    p.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    p.add_argument("--frames", type=int, help="default 8 (--tiny: 3)")
    p.add_argument("--steps", type=int, help="DDIM steps; default 20 (--tiny: 2)")
    p.add_argument("--batch-size", type=int, default=SamplerConfig.batch_size, help="frames per denoiser call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, help="the networks' arithmetic; default bf16 on CUDA, fp32 otherwise")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (the warm-up call compiles)")
    p.add_argument("--tiny", action="store_true", help="narrow configs and tiny sizes: a CPU smoke run")
    p.add_argument("--tiled", action="store_true",
                   help="instead: the tiled workloads (SD ×4 upscaler 540p → 2160p, SDXL inpainting 1080p, and the "
                        "upscaler's native 512² for reference)")
    args = p.parse_args(argv)
    args.frames = args.frames or (3 if args.tiny else 8)
    args.steps = args.steps or (2 if args.tiny else 20)
    args.precision = args.precision or ("bf16" if torch.device(args.device).type == "cuda" else "fp32")
    args.sides = TINY_OUTPUT_SIDES if args.tiny else OUTPUT_SIDES
    sizes = ", ".join(TILED) if args.tiled else "SR x4 " + ", ".join(
        f"{m} {args.sides[m] // SCALE}² -> {args.sides[m]}²" for m in args.models)
    print(f"GPU benchmark{' (tiny)' if args.tiny else ''}: {device_name(torch.device(args.device))}; precision "
          f"{args.precision}, channels_last {args.channels_last}, compile {args.compile}; {sizes}; "
          f"{args.frames} frames, {args.steps} DDIM steps, batch {args.batch_size}")
    return benchmark(args)


if __name__ == "__main__":
    main()
