"""Test videos the pipeline's users have: lossless films of exact frames, rotated phone video."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np


def write_lossless(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """(T, H, W, 3) uint8 RGB frames as FFV1 in Matroska: every frame decodes back exactly."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
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
