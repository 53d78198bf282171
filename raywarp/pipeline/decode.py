"""Decode only a span of a video: seek to the keyframe before it, decode forward."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np

from raywarp.pipeline.source import VideoError, filesystem


class Truncated(VideoError):
    """The video ends before the frames asked for."""


def _indexed_frames(container, stream, rate: Fraction):
    """Yield (frame index, frame) decoding forward from the container's current position.

    Index i is the frame shown at i / rate after the stream's start time.
    """
    start_time = stream.start_time or 0
    for frame in container.decode(stream):
        yield round((frame.pts - start_time) * stream.time_base * rate), frame


def _rewind(container, stream):
    """Seek to the stream's first keyframe."""
    try:
        # Earlier than any packet. Seeking to the start time itself can overshoot where
        # a demuxer's seek is approximate (mpegts bisects the file).
        container.seek(-(2**62), stream=stream, backward=True)
    except av.error.PermissionError:  # avi: no index entry before the first packet
        container.seek(stream.start_time or 0, stream=stream, backward=True)


def _seek(container, stream, rate: Fraction, index: int):
    """Seek to the last keyframe at or before frame `index`."""
    if index == 0:
        return _rewind(container, stream)
    # Half a frame early, so a timestamp rounded up still lands at or before the frame.
    ts = (stream.start_time or 0) + math.floor((index - Fraction(1, 2)) / rate / stream.time_base)
    container.seek(ts, stream=stream, backward=True)


def _frames_from(container, stream, rate: Fraction, start: int):
    """Yield (index, frame) from a keyframe at or before frame `start` onwards.

    A container index can place a keyframe after `start` (its decode timestamp is
    earlier than its display timestamp), and an open GOP's leading frames cannot be
    decoded after a seek: whenever the first frame out is past `start`, seek further back.
    """
    lead = 0
    while True:
        target = max(start - lead, 0)
        _seek(container, stream, rate, target)
        frames = _indexed_frames(container, stream, rate)
        first = next(frames, None)
        if (first is not None and first[0] <= start) or target == 0:
            break
        lead = 2 * lead + 1 + (first[0] - start if first is not None else 0)
    if first is not None:
        yield first
        yield from frames


def open_video(f, uri: str):
    """(container, its first video stream) of the open file `f`; VideoError if there is none."""
    container = av.open(f, "r")
    if not container.streams.video:
        container.close()
        raise VideoError(uri, "not a video (no video stream)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threads: output is identical, just faster
    return container, stream


def span_frames(container, stream, uri: str, start: int, stop: int, fps=None):
    """Yield the decoded frames (av.VideoFrame) [start, stop), in order, one per index.

    Frame i is the one shown at i / fps after the stream's start (default fps: the
    stream's average rate). Raises VideoError where the timestamps do not count up one
    frame at a time (a missing frame, a repeated timestamp: corrupt data or a variable
    frame rate) and where the video ends early.
    """
    rate = Fraction(fps) if fps else (stream.average_rate or stream.guessed_rate)
    expected = start
    for index, frame in _frames_from(container, stream, rate, start):
        if expected == start and index < start:  # before the span, after the seek
            continue
        if index >= stop:
            return
        if index != expected:
            at = float(index / rate)
            raise VideoError(uri, f"frame {expected} expected, the next decoded is shown at {at:.3f} s, where the "
                                  f"average rate {float(rate):.3f} fps puts frame {index} (corrupt data or a variable "
                                  "frame rate; convert to a constant rate first, e.g. ffmpeg -i IN -fps_mode cfr OUT)")
        yield frame
        expected += 1
    if expected < stop:
        raise Truncated(uri, f"truncated: got {expected - start} of {stop - start} frames from frame {start}")


def to_rgb(frame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB, in the colour space the stream is tagged with.

    YUV of more than 8 bits per sample (10-bit, 12-bit) has its chroma brought to full
    size at 16 bits first: swscale's direct path from subsampled 10-bit to 8-bit RGB is
    off by up to 3 levels (`tests/test_video_io.py` measures the conversion).
    """
    if frame.format.is_rgb or max(c.bits for c in frame.format.components) <= 8:
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(format="yuv444p16le").to_ndarray(format="rgb24")


def upright(frame, rotation: int) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB (`to_rgb`), turned as the video is displayed
    (`rotation`: degrees counterclockwise, from `probe`)."""
    rgb = to_rgb(frame)
    return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb


def decode_span(uri: str, start: int, stop: int, storage_options: dict | None = None, fps=None,
                rotation: int = 0) -> np.ndarray:
    """Frames [start, stop) of the video at `uri`, (stop - start, H, W, 3) uint8 RGB.

    Frame i is the i-th frame in display order from the start of the stream, found
    by its timestamp at `fps` (default: the stream's average rate), turned upright by
    `rotation` (degrees counterclockwise). Seeks to the keyframe before `start` and
    decodes forward; only the span is kept in memory. Equal to the same slice of a full
    sequential decode. Raises VideoError when the video cannot deliver the span
    (truncated, corrupt, not at a constant rate), ValueError for an empty or negative span.
    """
    if start < 0 or stop <= start:
        raise ValueError(f"span: need 0 <= start < stop, got [{start}, {stop})")
    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as f:
        try:
            container, stream = open_video(f, uri)
            with container:
                out = None
                for k, frame in enumerate(span_frames(container, stream, uri, start, stop, fps)):
                    image = upright(frame, rotation)
                    if out is None:
                        out = np.empty((stop - start, *image.shape), np.uint8)
                    out[k] = image
                return out
        except av.FFmpegError as err:
            raise VideoError(uri, f"truncated or corrupt data in frames [{start}, {stop}) ({err})") from err
