"""Where videos come from: listing a source, fingerprinting and probing each video."""

from __future__ import annotations

import os
import posixpath
from fractions import Fraction
from typing import NamedTuple

import av
import fsspec
from fsspec.implementations.local import LocalFileSystem

from raywarp.pipeline.records import Video

VIDEO_EXTENSIONS = frozenset({"mp4", "mov", "mkv", "avi", "webm", "m4v", "mpg", "mpeg", "ts", "wmv", "flv"})
LIST_EXTENSIONS = frozenset({"txt", "lst", "list"})
AUDIO_EXTENSIONS = frozenset({"m4a", "mp3", "wav", "flac", "aac", "ogg", "oga", "opus", "wma", "aif", "aiff"})
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "tif", "tiff", "bmp", "webp", "gif", "exr", "dpx", "heic"})
# Codecs of still pictures: a "video" of one such frame is an image (or an audio file's
# cover art), not footage.
STILL_CODECS = frozenset({"png", "mjpeg", "jpegls", "bmp", "tiff", "webp", "gif", "jpeg2000", "ppm", "pgm", "exr", "dpx"})


class Listing(NamedTuple):
    """What a source names: the videos taken (sorted URIs), and every other file met in
    a directory with why it was not taken ({URI: reason})."""

    videos: list[str]
    skipped: dict[str, str]


def not_taken_reason(path: str) -> str:
    """Why a file met in a directory is not taken as a video."""
    ext = _extension(path)
    if ext in AUDIO_EXTENSIONS:
        return f"an audio file (.{ext}): no video to restore"
    if ext in IMAGE_EXTENSIONS:
        return f"a still image (.{ext}): raywarp restores videos, not single images or image sequences"
    return f"not a video file ({'.' + ext if ext else 'no extension'})"
_LOCAL_PROTOCOLS = frozenset({"file", "local"})


class VideoError(Exception):
    """A video that cannot be used; `str(err)` is "URI: reason"."""

    def __init__(self, uri: str, reason: str):
        super().__init__(uri, reason)  # args = (uri, reason): pickles across Ray workers
        self.uri, self.reason = uri, reason

    def __str__(self) -> str:
        return f"{self.uri}: {self.reason}"


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".")


def filesystem(uri: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) for `uri`.

    storage_options (credentials, endpoint) only go to remote filesystems, so one
    options dict can serve a job that mixes local paths and s3:// URIs.
    """
    options = {} if fsspec.utils.get_protocol(uri) in _LOCAL_PROTOCOLS else (storage_options or {})
    return fsspec.core.url_to_fs(uri, **options)


def _to_uri(fs, path: str) -> str:
    """Public URI of `path` on `fs`: an absolute path for local files, else "proto://path"."""
    return os.path.abspath(path) if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _read_list(fs, path: str) -> list[str]:
    """Entries of a list file: one URI per line; blanks and "#" comments skipped.

    Relative entries are resolved against the list file's folder.
    """
    entries = []
    for line in fs.cat_file(path).decode().splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" not in entry and not entry.startswith("/"):
            entry = _to_uri(fs, posixpath.normpath(posixpath.join(posixpath.dirname(path), entry)))
        entries.append(entry)
    return entries


def list_videos(src: str, storage_options: dict | None = None) -> Listing:
    """The videos that `src` names (sorted, de-duplicated absolute URIs), and the files
    of a directory it does not take, each with the reason.

    `src` is one of: a video file; a directory or prefix (searched recursively, kept
    by video extension); a glob (every matching file kept); a .txt/.lst/.list file
    of URIs. Raises FileNotFoundError when `src` does not exist or yields nothing.
    """
    fs, path = filesystem(src, storage_options)
    skipped = {}
    if any(c in path for c in "*?["):
        found = [p for p, info in fs.glob(path, detail=True).items() if info["type"] == "file"]
    elif fs.isdir(path):
        found = []
        for p in fs.find(path):
            if _extension(p) in VIDEO_EXTENSIONS:
                found.append(p)
            else:
                skipped[_to_uri(fs, p)] = not_taken_reason(p)
    elif fs.isfile(path):
        if _extension(path) in LIST_EXTENSIONS:
            uris = _read_list(fs, path)
            if not uris:
                raise FileNotFoundError(f"{src}: list file names no videos")
            return Listing(sorted(set(uris)), {})
        found = [path]
    else:
        raise FileNotFoundError(f"{src}: no such file, directory or prefix")
    if not found:
        reasons = "; ".join(f"{posixpath.basename(u)}: {r}" for u, r in list(skipped.items())[:3])
        raise FileNotFoundError(f"{src}: no videos found" + (f" ({reasons})" if reasons else ""))
    return Listing(sorted({_to_uri(fs, p) for p in found}), skipped)


def _fingerprint(info: dict) -> str:
    """"{size}-{version}" from an `fs.info` dict; the version changes when the content is rewritten."""
    etag = info.get("ETag")  # S3: changes with every upload of different content
    version = etag.strip('"') if etag else info["mtime"]
    return f"{info['size']}-{version}"


def fingerprint(uri: str, storage_options: dict | None = None) -> str:
    """Cheap content-version id: "{size}-{mtime}" locally, "{size}-{ETag}" on S3."""
    fs, path = filesystem(uri, storage_options)
    return _fingerprint(fs.info(path))


def _decode_first(packets):
    """(first decoded frame or None, packets consumed) from a demux iterator."""
    consumed = 0
    for packet in packets:
        consumed += packet.size > 0  # the final empty packet only flushes the decoder
        frames = packet.decode()
        if frames:
            return frames[0], consumed
    return None, consumed


def _rotation(stream, frame) -> int:
    """Display rotation, degrees counterclockwise in {0, 90, 180, 270} for the usual
    cases: `np.rot90(frame, rotation // 90)` shows a decoded frame upright."""
    # FFmpeg >= 7 attaches the container's display matrix to decoded frames (PyAV >= 14
    # reads it as frame.rotation, counterclockwise); older builds exported a stream
    # "rotate" tag instead, in clockwise degrees.
    ccw = getattr(frame, "rotation", 0) or -float(stream.metadata.get("rotate", 0))
    return round(ccw) % 360


def _not_copied(container) -> str:
    """The streams the output does not carry: every one but the first video (restored)
    and the first audio (copied), e.g. "subtitle 2 (subrip); audio 3 (aac)"."""
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    return "; ".join(f"{s.type} {s.index} ({s.codec_context.name if s.codec_context else 'unknown codec'})"
                     for s in container.streams if s is not video and s is not audio)


def _duration_s(container, stream, frames: int, fps: Fraction) -> float:
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return float(frames / fps)


def probe(uri: str, storage_options: dict | None = None) -> Video:
    """Read a video's header (and, when the container has no frame count, its packets).

    Reads through an fsspec file object, so S3 objects are range-read, not downloaded.
    Decodes exactly one frame to check the video is usable. Returns its `Video`
    (`not_copied`: see `_not_copied`). Raises VideoError naming the problem.
    """
    fs, path = filesystem(uri, storage_options)
    info = fs.info(path)
    if info["size"] == 0:
        raise VideoError(uri, "empty file (0 bytes)")
    with fs.open(path, "rb") as f:
        try:
            container = av.open(f, "r")
        except av.FFmpegError as err:
            raise VideoError(uri, f"not a video ({err})") from err
        with container:
            if not container.streams.video:
                raise VideoError(uri, "not a video (no video stream)")
            stream = container.streams.video[0]
            if stream.disposition & av.stream.Disposition.attached_pic:
                raise VideoError(uri, "not a video: an audio file with a cover picture")
            packets = container.demux(stream)
            try:
                first, consumed = _decode_first(packets)
            except av.FFmpegError as err:
                raise VideoError(uri, f"first frame does not decode ({err})") from err
            try:
                # No frame count in the header (e.g. mkv, webm): count the remaining packets.
                frames = stream.frames if stream.frames > 0 else consumed + sum(p.size > 0 for p in packets)
            except av.FFmpegError as err:
                raise VideoError(uri, f"corrupt video data ({err})") from err
            if frames == 0:
                raise VideoError(uri, "no video frames")
            if frames == 1 and stream.codec_context.name in STILL_CODECS:
                raise VideoError(uri, f"a still image ({stream.codec_context.name}), not a video: raywarp restores "
                                      "videos (an image has no motion for warped sampling to use)")
            if first is None:
                raise VideoError(uri, "first frame does not decode (decoder returned no frame)")
            fps = stream.average_rate or stream.guessed_rate
            if not fps:
                raise VideoError(uri, "unknown frame rate")
            rotation = _rotation(stream, first)
            width, height = (first.height, first.width) if rotation % 180 else (first.width, first.height)
            return Video(
                uri=uri,
                size_bytes=info["size"],
                fingerprint=_fingerprint(info),
                width=width,
                height=height,
                fps_num=fps.numerator,
                fps_den=fps.denominator,
                fps=float(fps),
                frames=int(frames),
                duration_s=_duration_s(container, stream, frames, fps),
                codec=stream.codec_context.name,
                pix_fmt=first.format.name,
                rotation=rotation,
                has_audio=bool(container.streams.audio),
                not_copied=_not_copied(container),
            )
