"""Test videos the pipeline's users have: lossless films of exact frames, rotated phone video."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from raywarp.pipeline.records import Video


def probed(frames: int, uri: str = "/v/a.mp4", video_id: str = "v", rotation: int = 0) -> Video:
    """A probed video of `frames` frames, as planning sees it (the rest of a probe is filler)."""
    return Video(uri=uri, size_bytes=1, fingerprint="1-1", width=24, height=16, fps_num=25, fps_den=1, fps=25.0,
                 frames=frames, duration_s=frames / 25, codec="h264", pix_fmt="yuv420p", rotation=rotation,
                 has_audio=False, not_copied="", video_id=video_id)


def write_lossless(path: Path, frames: np.ndarray, fps: int = 25, times_ms: list[int] | None = None) -> Path:
    """(T, H, W, 3) uint8 RGB frames as FFV1 in Matroska: every frame decodes back exactly.

    times_ms: each frame's timestamp in milliseconds (default: one every 1/fps).
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        stream.time_base = Fraction(1, 1000)
        for k, frame in enumerate(frames):
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            image.pts = times_ms[k] if times_ms else round(k * 1000 / fps)
            image.time_base = stream.time_base
            container.mux(stream.encode(image))
        container.mux(stream.encode(None))
    return path


def shown_rotated(src: Path, dst: Path) -> Path:
    """A copy of the mp4 `src` whose track header says: show it turned 90 degrees
    clockwise (270 counterclockwise), the matrix phones write for portrait video."""
    data = bytearray(src.read_bytes())
    tkhd = data.index(b"tkhd") + 4
    assert data[tkhd] == 0  # version 0 layout: the matrix is 36 bytes after version/flags
    struct.pack_into(">5i", data, tkhd + 4 + 36, 0, 1 << 16, 0, -(1 << 16), 0)
    dst.write_bytes(data)
    return dst
