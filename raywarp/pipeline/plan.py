"""The plan: every video cut into units of work with deterministic ids.

A video is a sequence of shots (`raywarp.pipeline.shots`); each shot is planned on its
own, as if it were a video: no unit spans a cut, so no seam, anchor or guidance reaches
across one, and every shot has its own noise seed and starts its own noise chain.

Cross-shard stitching, two phases (the keyframe scheme of FRESCO / Rerender-A-Video,
applied to whole runs of frames). Clip k nominally spans frames [k·(L−o), k·(L−o)+L);
neighbouring clips share o = `overlap` frames, the *seam*.

    phase 1  every seam is sampled once, as a short clip of its own (the seams of a video
             are independent of each other).
    phase 2  every clip samples its own frames plus the seam frame on either side,
             those two known: the seams' restored frames (anchors).

So no unit waits for more than its two seams: one long video spreads over the whole
cluster. At a seam edge the clip's frame is guided toward the known anchor exactly as
interior frames are guided toward their neighbours, and in gp-warp modes the clip's
noise continues the seam's GP coordinates, so seams are as consistent as interiors.

A shot no longer than one clip is a single clip without seams.
"""

from __future__ import annotations

import hashlib
import math
import uuid

from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.records import Unit, Video

NAMESPACE = uuid.UUID("5f0c2a52-7d0e-4c53-9b39-2b8e0f1a6d11")


def video_id(uri: str, fingerprint: str, config_hash: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{uri}|{fingerprint}|{config_hash}"))


def unit_id(vid: str, kind: str, start: int, stop: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{vid}|{kind}|{start}|{stop}"))


def clip_starts(frames: int, clip_len: int, overlap: int) -> list[int]:
    """First frame of every clip: strides of clip_len − overlap until the rest fits."""
    if frames <= clip_len:
        return [0]
    count = math.ceil((frames - overlap) / (clip_len - overlap))
    return [k * (clip_len - overlap) for k in range(count)]


def shot_seed(config: RunConfig, content: str) -> int:
    """The noise seed of a shot: the run's seed and the shot's content digest, so the shot
    draws the same noise wherever it appears."""
    return int.from_bytes(hashlib.sha256(f"{config.seed}|{content}".encode()).digest()[:4], "little") >> 1


def _plan_shot(video: Video, shot: int, first: int, last: int, seed: int, config: RunConfig) -> list[Unit]:
    """Units of frames [first, last) of a video, one shot, seams first."""
    o = config.overlap
    starts = [first + s for s in clip_starts(last - first, config.clip_len, o)]
    vid = video.video_id

    def unit(kind: str, start: int, stop: int, out_start: int, out_stop: int, start_anchor="", end_anchor="") -> Unit:
        return Unit(id=unit_id(vid, kind, start, stop), video_id=vid, uri=video.uri, kind=kind,
                    phase=1 if kind == "seam" else 2, start=start, stop=stop, out_start=out_start, out_stop=out_stop,
                    start_anchor=start_anchor, end_anchor=end_anchor, shot=shot, shot_start=first, shot_stop=last,
                    seed=seed, video_frames=video.frames, rotation=video.rotation, frames=out_stop - out_start)

    seams = [unit("seam", s, s + o, s, s + o) for s in starts[1:]]
    clips = []
    for k, s in enumerate(starts):
        opening = k > 0
        closing = k == len(starts) - 1
        start = s + o - 1 if opening else first  # the previous seam's last frame
        stop = last if closing else starts[k + 1] + 1  # through the next seam's first frame
        clips.append(unit("clip", start, stop, start + 1 if opening else start, stop if closing else stop - 1,
                          seams[k - 1].id if opening else "", "" if closing else seams[k].id))
    return seams + clips


def plan_video(video: Video, shots: list[tuple[int, int, str]] | None, config: RunConfig) -> list[Unit]:
    """Units of one probed video, its `shots` (start, stop, content digest) each planned on
    its own (None: the video is one shot). `shot`, `shot_start`, `shot_stop` and `seed`
    of a unit say which shot it belongs to."""
    units = []
    for shot, (first, last, content) in enumerate(shots or [(0, video.frames, "")]):
        seed = shot_seed(config, content or f"{video.video_id}|{shot}")  # unscanned: the video's own
        units += _plan_shot(video, shot, first, last, seed, config)
    return units
