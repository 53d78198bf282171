"""The run's configuration: one typed dataclass from the command line to every stage.

`RunConfig.hash()` covers exactly the fields that change what is computed (task,
model, sampler, clip layout, seed); resource settings (actors, GPUs, batch sizes)
do not, so a resumed run may use a different cluster. The hash is part of every
clip id and of the manifest, which refuses to mix results of different configs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from raywarp import flow as rflow
from raywarp import inverse
from raywarp.densify import METHODS as DENSIFY_METHODS
from raywarp.sampler import SamplerConfig
from raywarp.tensors import PRECISIONS

RESOURCE = {"resource": True}  # field metadata: not hashed
FLOW_FROM = ("baseline", "input")


@dataclass(frozen=True)
class RunConfig:
    task: str = "sr"
    scale: int = 4
    kernel: str = "bicubic"
    mask: str | None = None  # inpainting hole spec (see raywarp.inverse.parse_mask)
    model: str = "default"
    sampler: SamplerConfig = SamplerConfig()
    clip_len: int = 16  # frames of one clip, its seams included
    overlap: int = 4  # frames neighbouring clips share (sampled once, as a seam)
    seed: int = 0
    flow_method: str = "dis"
    densify_method: str = "neuroexplicit"
    flow_from: str = "baseline"  # SR: estimate motion on the bicubic baseline, or on the low-res "input"
    shot_threshold: float = 27.0  # cut detection (raywarp.pipeline.shots); 0: every video is one shot
    precision: str = "fp32"  # the denoiser's arithmetic on GPU actors (fp32, bf16, fp16); changes the numbers, so hashed
    # Tiled denoising (`raywarp.tiles`), in output pixels: None = the model's default
    # (`Denoiser.default_tiling`), tile 0 = whole frames. Frames larger than a tile change, so hashed.
    tile: int | None = None
    tile_overlap: int | None = None
    # Inpainting: restore the holes in a crop around them at the model's native size
    # ("only masked"), not the whole frame; measured: docs/tiling.md#inpainting-in-a-crop.
    inpaint_crop: bool = True
    # Resources: where and how wide the work runs, not what it computes.
    gpus_per_actor: float = field(default=0.0, metadata=RESOURCE)
    min_actors: int = field(default=1, metadata=RESOURCE)
    max_actors: int = field(default=2, metadata=RESOURCE)
    # Logical CPUs per worker actor (flows and sampling; its torch and OpenCV threads are
    # this, rounded up) and per decode / encode task (light: they mostly wait on I/O and
    # the codec, so a fraction lets them run beside the actors on a small machine).
    actor_cpus: float = field(default=1.0, metadata=RESOURCE)
    decode_cpus: float = field(default=0.25, metadata=RESOURCE)
    compile: bool = field(default=False, metadata=RESOURCE)  # torch.compile the denoiser on GPU actors

    def __post_init__(self):
        if self.task not in inverse.TASKS:
            raise ValueError(f"task: unknown task {self.task!r}; choose one of {inverse.TASKS}")
        if self.task == "inpaint" and not self.mask:
            raise ValueError("mask: --task inpaint needs --mask (e.g. 'rect:0.3,0.3,0.6,0.6' or a mask file)")
        if self.task == "inpaint":
            inverse.check_mask_spec(self.mask)
        if self.task == "sr" and (not isinstance(self.scale, int) or self.scale < 2):
            raise ValueError(f"scale: super-resolution needs an integer scale >= 2, got {self.scale!r}")
        if self.kernel not in inverse.KERNELS:
            raise ValueError(f"kernel: choose one of {inverse.KERNELS}, got {self.kernel!r}")
        if self.overlap < 1:
            raise ValueError(f"overlap: neighbouring clips must share at least 1 frame, got {self.overlap}")
        if self.clip_len < 2 * self.overlap + 1:
            raise ValueError(
                f"clip_len: a clip holds its two seams of {self.overlap} frames and at least one frame of its own, "
                f"so clip_len must be >= {2 * self.overlap + 1}, got {self.clip_len}"
            )
        if self.flow_method not in rflow.METHODS:
            raise ValueError(f"flow_method: choose one of {rflow.METHODS}, got {self.flow_method!r}")
        if self.densify_method not in DENSIFY_METHODS:
            raise ValueError(f"densify_method: choose one of {DENSIFY_METHODS}, got {self.densify_method!r}")
        if not self.shot_threshold >= 0:
            raise ValueError(f"shot_threshold: must be >= 0 (0 turns cut detection off), got {self.shot_threshold}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: choose one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0)
               for v in (self.tile, self.tile_overlap)):
            raise ValueError(f"tile, tile_overlap: pixels >= 0 (tile 0: whole frames), got {self.tile}, {self.tile_overlap}")
        if self.flow_from not in FLOW_FROM:
            raise ValueError(f"flow_from: choose one of {FLOW_FROM}, got {self.flow_from!r}")
        if self.actor_cpus <= 0 or self.decode_cpus <= 0:
            raise ValueError(f"actor_cpus and decode_cpus must be > 0, got {self.actor_cpus}, {self.decode_cpus}")
        if self.gpus_per_actor < 0 or not 1 <= self.min_actors <= self.max_actors:
            raise ValueError(
                f"resources: need gpus_per_actor >= 0 and 1 <= min_actors <= max_actors, got "
                f"{self.gpus_per_actor}, {self.min_actors}, {self.max_actors}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        d["sampler"] = SamplerConfig(**d.get("sampler", {}))
        return cls(**d)

    def hashed_dict(self) -> dict:
        """The fields that determine the output."""
        return {f.name: getattr(self, f.name) if f.name != "sampler" else dataclasses.asdict(self.sampler)
                for f in dataclasses.fields(self) if not f.metadata.get("resource")}

    def hash(self) -> str:
        blob = json.dumps(self.hashed_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
