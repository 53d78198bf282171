"""Shots: where a video cuts, found by one cheap CPU pass over its frames before planning.

A cut is a hard boundary for everything downstream: the plan lays clips and seams out
inside each shot, the GP noise chain starts afresh at each shot's first frame, and no
guidance or anchoring reaches across (`raywarp.pipeline.plan`).

Detection is PySceneDetect's `ContentDetector` (mean HSV change between consecutive
frames against a threshold) on frames scaled down to `SCAN_WIDTH` by the decoder, with
no minimum shot length: a missed cut carries artifacts across it, a spurious one (a
flash) only makes a short shot, so short shots, down to one frame, are kept.

The same pass checks what planning relies on: every frame sits at its slot of a
constant frame rate (a variable-rate video is refused with the reason). And it hashes
each shot's first and last frames: the shot's noise seed comes from the run's seed and
the shot's own content, so a shot is restored the same whether it is cut out of a film
or stands alone.

Long videos are scanned as spans of `SCAN_SPAN` frames in parallel, each from the frame
before it (the cut at a span's first frame is a difference with that frame).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import av
import numpy as np
from scenedetect.detectors import ContentDetector

from raywarp.pipeline.decode import Truncated, open_video, span_frames, to_rgb
from raywarp.pipeline.source import filesystem

SCAN_SPAN = 2400  # frames per scan task
SCAN_WIDTH = 256  # detection width in pixels (PySceneDetect's own default downscale target)


@dataclass(frozen=True)
class ScannedSpan:
    """What the scan of a span found. cuts: the first frames of shots that start in the
    span (frame 0 included); digests: {frame: `frame_digest`} of those frames, the frames
    before them and the span's last frame; error: why the scan ended early ('' if not)."""

    cuts: list[int] = field(default_factory=list)
    digests: dict[int, str] = field(default_factory=dict)
    error: str = ""


def scan_spans(frames: int) -> list[tuple[int, int]]:
    """The spans [start, stop) a video of `frames` frames is scanned in."""
    return [(a, min(a + SCAN_SPAN, frames)) for a in range(0, frames, SCAN_SPAN)]


def _small_bgr(frame) -> np.ndarray:
    width = min(SCAN_WIDTH, frame.width)
    height = max(1, round(frame.height * width / frame.width))
    return frame.to_ndarray(width=width, height=height, format="bgr24")


def frame_digest(frame) -> str:
    """sha256 of a decoded frame's RGB pixels (as decoded, before any rotation)."""
    return hashlib.sha256(to_rgb(frame).tobytes()).hexdigest()


def scan_span(uri: str, start: int, stop: int, threshold: float, storage_options: dict | None = None) -> ScannedSpan:
    """Cuts and shot digests in frames [start, stop) of a video (see `ScannedSpan`).

    A variable frame rate raises
    VideoError (the video cannot be planned); a decode failure part way ends the scan
    with the cuts found so far and the error (the units past it fail when decoded).
    """
    fs, path = filesystem(uri, storage_options)
    detector = ContentDetector(threshold=threshold, min_scene_len=1)
    cuts, digests, error, previous, reached = [], {}, "", None, None
    with fs.open(path, "rb") as f:
        try:
            container, stream = open_video(f, uri)
            with container:
                for index, frame in enumerate(span_frames(container, stream, uri, max(start - 1, 0), stop),
                                              start=max(start - 1, 0)):
                    cut = detector.process_frame(index, _small_bgr(frame))
                    if index >= start and (index == 0 or cut):
                        cuts.append(index)
                        digests[index] = frame_digest(frame)
                        if previous is not None:
                            digests[index - 1] = frame_digest(previous)
                    if index == stop - 1:
                        digests[index] = frame_digest(frame)
                    previous, reached = frame, index
        except Truncated as exc:
            error = str(exc)
        except av.FFmpegError as exc:
            where = f"after frame {reached}" if reached is not None else f"at frame {max(start - 1, 0)}"
            error = f"{uri}: corrupt data {where} ({exc})"
    return ScannedSpan(cuts, digests, error)


def shots(frames: int, spans: list[ScannedSpan]) -> list[tuple[int, int, str]]:
    """(start, stop, content digest) of every shot of a video of `frames` frames, from
    the `scan_span` results of its spans in order. The content digest covers the shot's
    first and last frames and its length.

    Where a scan ended early (corrupt data), the frames it did not reach belong to the
    last shot found; the units over them fail at decode.
    """
    cuts, digests = [], {}
    for span in spans:
        cuts += span.cuts
        digests.update(span.digests)
    if not cuts or cuts[0] != 0:
        cuts.insert(0, 0)
    bounds = cuts + [frames]

    def content(a: int, b: int) -> str:
        return hashlib.sha256(f"{digests.get(a, '')}|{digests.get(b - 1, '')}|{b - a}".encode()).hexdigest()

    return [(a, b, content(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if a < b]
