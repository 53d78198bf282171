"""Ray Data stages: decode (CPU tasks), flow + densify (actor pool), sample + commit (actor pool).

Pass 0 runs decode → EstimateFlows, which stores each unit's flows and end map; passes 1
(seams) and 2 (clips) run decode → SampleUnits, which loads them (see `raywarp.pipeline.run`).
Each batch is one unit of the plan (batch_size=1: a unit is already many frames).
A stage never raises for a bad unit: it records the error in the row's `error` column
and later stages pass the row through, so the sample stage writes a 'failed' progress
row for it. Ray Data would otherwise drop the failed block's rows, and the clip with them.
Heavy state (densifier, denoiser, manifest handle) is built once per actor in `__init__`.
"""

from __future__ import annotations

import json
import socket
import time
import traceback

import numpy as np
import torch

from raywarp.densify import shipped_model
from raywarp.models import geometry, load_denoiser
from raywarp.pipeline import clip as rclip
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.manifest import Manifest

EMPTY_PIXELS = np.zeros((0, 1, 1, 3), np.uint8)


def flows_key(unit_id: str) -> str:
    return f"flows/{unit_id}"


def coords_key(unit_id: str) -> str:
    return f"coords/{unit_id}"


def _row(batch: dict) -> dict:
    return {k: v[0] for k, v in batch.items()}


def _batch(row: dict) -> dict:
    return {k: [v] for k, v in row.items()}


def _error(stage: str, exc: Exception) -> str:
    """'stage: Type: message' and the innermost frame, readable in `raywarp status`."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{stage}: {type(exc).__name__}: {exc}{at}"


def progress_row(row: dict, attempt: int, **fields) -> dict:
    """A progress record for the unit in `row`; `fields` fill in the outcome."""
    return {"id": row["id"], "video_id": row["video_id"], "uri": row["uri"], "kind": row["kind"], "attempt": attempt,
            "node": socket.gethostname(), **fields}


def device_for(config: RunConfig) -> str:
    return "cuda" if config.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"


def decode_unit(batch: dict, storage_options: dict | None = None) -> dict:
    """Decode only the unit's span [start, stop) of its video."""
    row = _row(batch)
    t0 = time.perf_counter()
    row["pixels"], row["error"] = EMPTY_PIXELS, ""
    try:
        row["pixels"] = decode_span(row["uri"], int(row["start"]), int(row["stop"]), storage_options)
    except Exception as exc:  # noqa: BLE001 - recorded in the manifest, never lost
        row["error"] = _error("decode", exc)
    row["seconds_decode"] = time.perf_counter() - t0
    return _batch(row)


class EstimateFlows:
    """Pass 0: flow on the baseline restoration, densified where unreliable or unobserved;
    stores the flows and the unit's end map (payload `flows/<id>`), or a failed row."""

    def __init__(self, config: dict, dst: str, storage_options: dict | None, attempt: int):
        self.config = RunConfig.from_dict(config)
        self.geometry = geometry(self.config.model)  # u-space of the sampler, without loading it
        self.manifest = Manifest(dst, storage_options)
        self.attempt = attempt
        if self.config.densify_method == "neuroexplicit":
            shipped_model("cpu")  # load the densifier once per actor

    def __call__(self, batch: dict) -> dict:
        row = _row(batch)
        started, t0 = time.time(), time.perf_counter()
        error = row["error"]
        if not error:
            try:
                m = rclip.measure(row["pixels"], self.config, int(row["start"]), int(row["video_frames"]))
                fwd, bwd = rclip.flows(m, self.config)
                end = rclip.end_map(m, fwd, bwd, self.geometry)
                seconds = np.array([row["seconds_decode"], time.perf_counter() - t0])
                self.manifest.put_arrays(flows_key(row["id"]), fwd=fwd, bwd=bwd, end_map=end, seconds=seconds)
            except Exception as exc:  # noqa: BLE001
                error = _error("flow", exc)
        if error:
            self.manifest.append_progress([progress_row(
                row, self.attempt, status="failed", frames=0, error=error, started_at=started - row["seconds_decode"],
                finished_at=time.time(), seconds_decode=float(row["seconds_decode"]), seconds_flow=time.perf_counter() - t0)])
        return _batch({"id": row["id"], "error": error})


class SampleUnits:
    """Passes 1 and 2: warped sampling of the unit, anchored to its seams; payload first,
    commit row last."""

    def __init__(self, config: dict, dst: str, storage_options: dict | None, attempt: int):
        self.config = RunConfig.from_dict(config)
        self.device = device_for(self.config)
        self.denoiser = load_denoiser(self.config.model, device=self.device)
        self.manifest = Manifest(dst, storage_options)
        self.attempt = attempt

    def _anchor(self, seam_id: str) -> dict | None:
        if not seam_id:
            return None
        if not self.manifest.has_arrays(seam_id):
            raise RuntimeError(f"seam {seam_id} has no committed result (see its own row); cannot stitch to it")
        return self.manifest.get_arrays(seam_id)

    def _inputs(self, unit_id: str) -> tuple[dict, np.ndarray]:
        for key in (flows_key(unit_id), coords_key(unit_id)):
            if not self.manifest.has_arrays(key):
                raise RuntimeError(f"no {key.split('/')[0]} for this unit (a flow failure in this video; see its rows)")
        return self.manifest.get_arrays(flows_key(unit_id)), self.manifest.get_arrays(coords_key(unit_id))["start"]

    def __call__(self, batch: dict) -> dict:
        row = _row(batch)
        started = time.time()
        t0 = t_sampled = time.perf_counter()
        error, output, metrics, seconds = row["error"], "", {}, np.zeros(2)
        if not error:
            try:
                start = int(row["start"])
                flows, first_coords = self._inputs(row["id"])
                seconds = flows["seconds"]
                m = rclip.measure(row["pixels"], self.config, start, int(row["video_frames"]))
                restored = rclip.restore(
                    self.denoiser, m, flows["fwd"], flows["bwd"], self.config, rclip.video_seed(self.config, row["video_id"]),
                    start, first_coords, self._anchor(row["start_anchor"]), self._anchor(row["end_anchor"]), device=self.device,
                )
                t_sampled = time.perf_counter()
                own = slice(int(row["out_start"]) - start, int(row["out_stop"]) - start)
                arrays = {"frames": restored.frames[own]}
                if row["kind"] == "seam":
                    arrays.update(start_trajectory=restored.start_trajectory, end_trajectory=restored.end_trajectory)
                output = self.manifest.put_arrays(row["id"], **arrays)
                restored_x = torch.from_numpy(restored.frames).permute(0, 3, 1, 2) / 255
                metrics = {"measurement_error": m.op.measurement_error(restored_x, m.y)}
            except Exception as exc:  # noqa: BLE001
                error = _error("sample", exc)
        record = progress_row(
            row, self.attempt, status="failed" if error else "done", frames=0 if error else int(row["frames"]),
            started_at=started - float(seconds.sum()), finished_at=time.time(),
            seconds_decode=float(seconds[0]), seconds_flow=float(seconds[1]), seconds_sample=t_sampled - t0,
            seconds_write=time.perf_counter() - t_sampled if output else 0.0,
            metrics=json.dumps(metrics), error=error, output=output,
        )
        self.manifest.append_progress([record])  # the commit record, after the payload
        return _batch({"id": record["id"], "status": record["status"], "error": error})
