"""Encode restored frames to H.264 with the source's frame rate and audio."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import tempfile
from fractions import Fraction
from typing import NamedTuple

import av
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from raywarp.pipeline.source import filesystem

# Standard rates are n/1 or n/1001 (NTSC); a float like 29.97 becomes 2997/100.
_MAX_FPS_DENOMINATOR = 1001


class Encoded(NamedTuple):
    """What `encode_video` wrote: frames, and the file's size and sha256 (to check it later)."""

    frames: int
    bytes: int
    sha256: str


def _as_fraction(fps) -> Fraction:
    """`fps` as a positive Fraction (floats: the nearest with a small denominator)."""
    fps = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(_MAX_FPS_DENOMINATOR)
    if fps <= 0:
        raise ValueError(f"fps: must be positive, got {fps}")
    return fps


def _check_frame(frame, i: int, shape) -> np.ndarray:
    """`frame` as a contiguous (H, W, 3) uint8 array; ValueError if it is not one, or its shape is not `shape`."""
    frame = np.ascontiguousarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames[{i}]: expected a (H, W, 3) uint8 array, got {frame.dtype} {frame.shape}")
    if shape is not None and frame.shape != shape:
        raise ValueError(f"frames[{i}]: shape {frame.shape} differs from the first frame's {shape}")
    return frame


def _muxer_options(path: str) -> dict:
    """Output container options for a file named `path`."""
    # bitexact: no library version strings, so bytes do not change with the FFmpeg build.
    options = {"fflags": "+bitexact"}
    if os.path.splitext(path)[1].lower() in (".mp4", ".mov", ".m4v"):
        options["movflags"] = "+faststart"  # index at the front: playable while downloading
    return options


def _add_video_stream(container, fps: Fraction, height: int, width: int, crf: int, gop, preset: str, threads: int):
    """An H.264 stream of (height, width) frames at `fps` in `container`."""
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = width, height
    # 4:2:0 halves the chroma resolution, so libx264 refuses odd sizes; 4:4:4 takes any.
    stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    stream.time_base = 1 / fps  # frame i has pts i: exactly one output frame per input frame
    # Deterministic bytes: a fixed thread count (x264 output depends on it, "auto" on the
    # core count), and no macroblock tree, which made this libx264 build's output vary
    # from run to run on identical input (measured: several different bitstreams in 6 runs).
    stream.options = {"crf": str(crf), "preset": preset, "threads": str(threads), "x264-params": "mbtree=0"}
    if gop is not None:
        stream.codec_context.gop_size = gop
    return stream


def _audio_packets(source):
    """Yield (time in s, packet) for the audio packets of an open container, in file order.

    Timestamps are shifted by the source video's start time: the output video starts
    at 0, and the audio must keep its offset from the video, not from the file start.
    """
    stream = source.streams.audio[0]
    video = source.streams.video[0] if source.streams.video else None
    shift = round((video.start_time or 0) * video.time_base / stream.time_base) if video else 0
    for packet in source.demux(stream):
        if packet.size == 0:  # the final empty packet only flushes a decoder
            continue
        if packet.pts is not None:
            packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        ts = packet.dts if packet.dts is not None else packet.pts
        yield (float(ts * stream.time_base) if ts is not None else -math.inf), packet


class _AudioCopy:
    """Copies a source's audio packets into an output container, interleaved with the video by time.

    Fed as the video is written: FFmpeg's muxer waits only 10 s for a stream's packets
    before writing the others, so audio given at the end would land after all the video.
    """

    def __init__(self, source, out):
        self.stream = out.add_stream_from_template(source.streams.audio[0])
        self.packets = _audio_packets(source)
        self.pending = next(self.packets, None)

    def mux_until(self, out, seconds: float):
        """Mux every remaining audio packet that starts at or before `seconds`."""
        while self.pending is not None and self.pending[0] <= seconds:
            packet = self.pending[1]
            packet.stream = self.stream
            out.mux(packet)
            self.pending = next(self.packets, None)


def _open_audio_source(uri, storage_options, stack):
    """Open `uri` (kept open by `stack`) if it has an audio stream, else None."""
    if uri is None:
        return None
    fs, path = filesystem(uri, storage_options)
    source = stack.enter_context(av.open(stack.enter_context(fs.open(path, "rb")), "r"))
    return source if source.streams.audio else None


def encode_video(frames, dst_uri: str, fps, storage_options: dict | None = None, audio_source: str | None = None,
                 crf: int = 18, gop: int | None = None, *, preset: str = "medium", threads: int = 4) -> Encoded:
    """Encode `frames` ((H, W, 3) uint8 RGB arrays, consumed lazily) to H.264 at `dst_uri`.

    Frame i is shown at i / fps (a Fraction; a float is converted). The container
    follows dst_uri's extension (default mp4; mp4 gets its index up front). If
    `audio_source` (a URI) has an audio stream, its packets are copied in without
    re-encoding. The same frames and options give the same bytes. Writes a local
    temporary file (mp4 needs a seekable output), then uploads it through fsspec, so
    nothing appears at `dst_uri` unless every frame was encoded. Returns the frames
    written and the file's size and checksum. Raises ValueError when there are no
    frames, or a frame is not (H, W, 3) uint8 or differs in shape from the first.
    """
    fps = _as_fraction(fps)
    fs, path = filesystem(dst_uri, storage_options)
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1] or ".mp4")
    os.close(fd)
    try:
        count = _encode_to_file(frames, tmp, fps, storage_options, audio_source, crf, gop, preset, threads)
        with open(tmp, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if isinstance(fs, LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fs.put_file(tmp, path)
        return Encoded(count, os.path.getsize(tmp), digest)
    finally:
        os.remove(tmp)


def _encode_to_file(frames, tmp: str, fps: Fraction, storage_options, audio_source, crf, gop, preset, threads) -> int:
    """Encode into the local file `tmp`; see `encode_video`."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("frames: no frames to encode")
    shape = _check_frame(first, 0, None).shape
    with contextlib.ExitStack() as stack:
        source = _open_audio_source(audio_source, storage_options, stack)
        out = stack.enter_context(av.open(tmp, "w", options=_muxer_options(tmp)))
        video = _add_video_stream(out, fps, shape[0], shape[1], crf, gop, preset, threads)
        audio = _AudioCopy(source, out) if source is not None else None
        count = 0
        for frame in itertools.chain([first], frames):
            frame = av.VideoFrame.from_ndarray(_check_frame(frame, count, shape), format="rgb24")
            frame.pts = count
            if audio is not None:
                audio.mux_until(out, float(count / fps))
            out.mux(video.encode(frame))
            count += 1
        out.mux(video.encode(None))
        if audio is not None:
            audio.mux_until(out, math.inf)
    return count
