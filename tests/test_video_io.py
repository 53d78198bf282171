"""Tests for the pipeline's video I/O: listing sources, probing, span decoding, encoding.

Test videos are a real photograph moving 1 px per frame (`synthetic.affine_video`),
encoded with short GOPs so that spans start mid-GOP and cross keyframes. S3 runs
against the moto server from conftest.
"""

import os
import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import s3fs
import torch
from fsspec.implementations.local import LocalFileSystem

from raywarp import synthetic
from raywarp.pipeline import decode
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.encode import encode_video
from raywarp.pipeline.source import VideoError, filesystem, fingerprint, list_videos, probe
from videos import shown_rotated

SIZE = (48, 64)  # (H, W)
FRAMES = 30
GOP = 5
FPS = Fraction(24000, 1001)


def make_frames(frames: int, size, shift=(1.0, 0.0), angle_deg: float = 0.0) -> np.ndarray:
    """(T, H, W, 3) uint8: the "coffee" photo moving by `shift` px and `angle_deg` per frame."""
    motion = synthetic.affine_motion(size, shift=shift, angle_deg=angle_deg)
    video, _ = synthetic.affine_video("coffee", frames, size, motion)
    return (video.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def full_decode(path) -> np.ndarray:
    """(T, H, W, 3) uint8: every frame, decoded sequentially from the start."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def count_packets(path) -> int:
    """Number of (non-empty) packets of the video stream."""
    with av.open(str(path)) as container:
        return sum(p.size > 0 for p in container.demux(video=0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def write_with_audio(path, frames: np.ndarray, fps: Fraction, sample_rate: int = 16000):
    """H.264 `frames` and a 440 Hz AAC sine as long, in the container `path` names (mp4: index at the end)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=sample_rate)
        audio.layout = "mono"
        for i, a in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        t = np.arange(round(len(frames) / fps * sample_rate)) / sample_rate
        sine = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                          format="fltp", layout="mono")
        sine.sample_rate, sine.pts = sample_rate, 0
        out.mux(audio.encode(sine))
        out.mux(audio.encode(None))


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return make_frames(FRAMES, SIZE)


@pytest.fixture(scope="module")
def video(tmp_path_factory, frames) -> str:
    """A 30-frame 48x64 mp4 at 24000/1001 fps, keyframe every 5 frames."""
    path = str(tmp_path_factory.mktemp("src") / "coffee.mp4")
    assert encode_video(iter(frames), path, FPS, gop=GOP).frames == FRAMES
    return path


@pytest.fixture(scope="module")
def reference(video) -> np.ndarray:
    return full_decode(video)


# ---------------------------------------------------------------------------------------
# probe


@pytest.mark.parametrize("fps", [Fraction(24000, 1001), Fraction(25)])
def test_probe_reports_what_encode_wrote(tmp_path, frames, fps):
    path = str(tmp_path / "v.mp4")
    encode_video(iter(frames[:12]), path, fps, gop=GOP)
    info = probe(path)
    assert info.uri == path
    assert info.size_bytes == os.path.getsize(path) > 0
    assert info.fingerprint == fingerprint(path) == f"{os.path.getsize(path)}-{os.stat(path).st_mtime}"
    assert (info.width, info.height, info.frames) == (64, 48, 12)
    assert Fraction(info.fps_num, info.fps_den) == fps and info.fps == pytest.approx(float(fps))
    assert info.duration_s == pytest.approx(12 / float(fps))
    assert (info.codec, info.rotation, info.has_audio) == ("h264", 0, False)


def test_probe_counts_packets_when_the_header_has_no_frame_count(tmp_path, frames):
    path = str(tmp_path / "v.mkv")
    encode_video(iter(frames[:17]), path, 25, gop=GOP)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 0  # Matroska: no count, so probe must count
    assert probe(path).frames == 17


def test_rotated_video_is_probed_and_decoded_as_displayed(tmp_path, video, reference):
    path = shown_rotated(Path(video), tmp_path / "portrait.mp4")
    info = probe(str(path))
    assert info.rotation == 270
    assert (info.width, info.height) == (reference.shape[1], reference.shape[2])  # portrait
    frames = decode_span(str(path), 3, 9, rotation=info.rotation)
    np.testing.assert_array_equal(frames, np.rot90(reference[3:9], 3, axes=(1, 2)))  # turned clockwise


def test_audio_is_detected_and_copied_packet_for_packet(tmp_path, frames):
    # 1 fps: a 30 s clip, longer than the 10 s FFmpeg's own interleaving buffer waits for.
    fps = Fraction(1)
    src, dst = tmp_path / "with_audio.mp4", str(tmp_path / "restored.mp4")
    write_with_audio(src, frames, fps, sample_rate=8000)
    assert probe(str(src)).has_audio is True
    assert encode_video(iter(frames[::-1]), dst, fps, audio_source=str(src)).frames == FRAMES
    info = probe(dst)
    assert info.has_audio is True and info.frames == FRAMES and info.fps == 1
    with av.open(str(src)) as source:
        src_audio = [bytes(p) for p in source.demux(audio=0) if p.size]
    with av.open(dst) as out:
        assert out.streams.audio[0].codec_context.name == "aac"
        out_audio = [bytes(p) for p in out.demux(audio=0) if p.size]
    assert len(out_audio) == len(src_audio) > 100
    assert out_audio == src_audio  # remuxed, not re-encoded
    # Interleaved: reading the file front to back never goes back more than 2 s in time
    # (audio written after the video would go back up to 30 s).
    with av.open(dst) as out:
        in_file_order = sorted((p.pos, float(p.dts * p.time_base)) for p in out.demux() if p.size)
    times = np.array([t for _, t in in_file_order])
    assert np.max(np.maximum.accumulate(times) - times) < 2


def audio_lead(path) -> float:
    """Seconds from the start of the video stream to the first audio packet."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        first = next(p for p in container.demux(audio=0) if p.size)
        return float(first.pts * first.time_base - video.start_time * video.time_base)


def test_streams_the_output_does_not_carry_are_reported(tmp_path, frames):
    """A second audio track (a commentary, another language) is named, not silently lost."""
    path = tmp_path / "two_tracks.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        tracks = [out.add_stream("aac", rate=8000), out.add_stream("mp3", rate=8000)]
        for track in tracks:
            track.layout = "mono"
        for i, a in enumerate(frames[:5]):
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for track in tracks:
            silence = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.float32), format="fltp", layout="mono")
            silence.sample_rate, silence.pts = 8000, 0
            out.mux(track.encode(silence))
            out.mux(track.encode(None))
    info = probe(str(path))
    assert info.has_audio and info.not_copied == "audio 2 (mp3float)"
    encode_video(iter(frames[:3]), str(tmp_path / "video_only.mp4"), 25)
    assert probe(str(tmp_path / "video_only.mp4")).not_copied == ""


def test_copied_audio_keeps_its_offset_from_the_video(tmp_path, frames):
    # MPEG-TS timestamps need not start at 0; in this one the audio starts before the video.
    src, dst = tmp_path / "camera.ts", tmp_path / "restored.mp4"
    write_with_audio(src, frames, Fraction(25), sample_rate=8000)
    encode_video(iter(frames), str(dst), 25, audio_source=str(src))
    assert abs(audio_lead(src)) > 0.05
    assert audio_lead(dst) == pytest.approx(audio_lead(src), abs=1e-3)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file (0 bytes)"),
    (b"these are the notes of a meeting\n" * 20, "not a video"),
    (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a video"),
])
def test_probe_names_the_file_and_the_problem(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError) as info:
        probe(str(path))
    assert str(info.value).startswith(f"{path}: {reason}")
    # Ray ships exceptions between processes: the message must survive pickling.
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_probe_rejects_files_without_video_frames(tmp_path):
    no_frames = tmp_path / "no_frames.avi"  # a video stream that never got a frame
    with av.open(str(no_frames), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    with pytest.raises(VideoError, match=rf"^{no_frames}: no video frames$"):
        probe(str(no_frames))
    sound = tmp_path / "sound.wav"  # audio only
    with av.open(str(sound), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        stream.layout = "mono"
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        out.mux(stream.encode(samples))
    with pytest.raises(VideoError, match=rf"^{sound}: not a video \(no video stream\)$"):
        probe(str(sound))


def test_a_still_image_or_an_audio_file_named_like_a_video_is_refused(tmp_path):
    """A photograph renamed .mp4 is not "restored" as a one-frame video, and an audio
    file with cover art (a one-picture video stream) is not a video either."""
    import cv2
    from skimage import data

    still = tmp_path / "photo.mp4"
    still.write_bytes(cv2.imencode(".png", data.astronaut()[:64, :64, ::-1])[1].tobytes())
    with pytest.raises(VideoError, match=rf"^{still}: a still image \(png\), not a video"):
        probe(str(still))
    song = tmp_path / "song.m4a"
    with av.open(str(song), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=8000)
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 16, 16, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").reformat(format="yuvj420p")
        for packet in cover.encode(picture):
            out.mux(packet)
        out.mux(cover.encode(None))
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        out.mux(audio.encode(samples))
        out.mux(audio.encode(None))
    with pytest.raises(VideoError, match=rf"^{song}: not a video"):
        probe(str(song))


def test_truncated_videos_fail_with_a_clear_reason(tmp_path, video, reference, frames):
    data = open(video, "rb").read()
    # Index at the front (what encode_video writes): the header survives a cut.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(0.3 * len(data))])  # ends inside the first keyframe
    with pytest.raises(VideoError, match=rf"^{cut}: first frame does not decode"):
        probe(str(cut))
    cut.write_bytes(data[: int(0.5 * len(data))])  # probes fine: the missing frames show when decoded
    assert probe(str(cut)).frames == FRAMES
    np.testing.assert_array_equal(decode_span(str(cut), 0, 5), reference[:5])
    with pytest.raises(VideoError, match=rf"^{cut}: truncated"):
        decode_span(str(cut), 24, FRAMES)
    # Index at the end (most other tools write it there): without it the file is no video.
    tail_indexed = tmp_path / "tail_indexed.mp4"
    write_with_audio(tail_indexed, frames, FPS)
    cut.write_bytes(tail_indexed.read_bytes()[: int(0.3 * tail_indexed.stat().st_size)])
    with pytest.raises(VideoError, match=rf"^{cut}: not a video \(.*Invalid data"):
        probe(str(cut))


# ---------------------------------------------------------------------------------------
# decode_span


@pytest.fixture
def seeks(monkeypatch) -> list:
    """The frame indices decode_span seeks to, in order."""
    log, real_seek = [], decode._seek

    def logged_seek(container, stream, rate, index):
        log.append(index)
        real_seek(container, stream, rate, index)

    monkeypatch.setattr(decode, "_seek", logged_seek)
    return log


@pytest.mark.parametrize("start, stop", [
    (7, 9),    # mid-GOP start
    (3, 13),   # crosses two keyframes
    (5, 6),    # a keyframe alone
    (12, 13),  # a single mid-GOP frame
    (24, 30),  # the tail, to the last frame
    (0, 30),   # everything
])
def test_decode_span_equals_the_slice_of_a_full_decode(seeks, video, reference, start, stop):
    span = decode_span(video, start, stop)
    assert span.shape == (stop - start, 48, 64, 3) and span.dtype == np.uint8
    np.testing.assert_array_equal(span, reference[start:stop])
    assert seeks == [start]  # the first seek already lands at or before `start`


def write_mjpeg_avi(path, frames: np.ndarray, fps: Fraction):
    """An AVI of JPEG frames (every frame a keyframe), as old cameras write."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuvj420p"
        for i, a in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.mark.parametrize("ext", ["mkv", "ts", "avi"])
def test_decode_span_in_other_containers(tmp_path, frames, ext):
    # Matroska and MPEG-TS carry no frame count; MPEG-TS seeks approximately (by
    # bisecting the file); AVI cannot seek before its first index entry.
    path = tmp_path / f"v.{ext}"
    if ext == "avi":
        write_mjpeg_avi(path, frames, FPS)
    else:
        encode_video(iter(frames), str(path), FPS, gop=GOP)
    assert probe(str(path)).frames == FRAMES
    reference = full_decode(path)
    for start, stop in [(0, 3), (7, 12), (26, 30)]:
        np.testing.assert_array_equal(decode_span(str(path), start, stop), reference[start:stop])


def _plane_means(frame) -> list[float]:
    """Mean sample value of each plane of a decoded planar YUV frame."""
    dtype = np.uint16 if frame.format.components[0].bits > 8 else np.uint8
    means = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // np.dtype(dtype).itemsize)
        means.append(float(rows[:, : plane.width].mean()))
    return means


def _bt601_limited(y: float, u: float, v: float, bits: int) -> np.ndarray:
    """RGB in 0..255 of limited-range BT.601 samples of `bits` bits (the untagged default)."""
    scale = 2 ** (bits - 8)
    y, cb, cr = (y / scale - 16) * 255 / 219, (u / scale - 128) * 255 / 224, (v / scale - 128) * 255 / 224
    kr, kb = 0.299, 0.114
    r, b = y + 2 * (1 - kr) * cr, y + 2 * (1 - kb) * cb
    return np.clip([r, (y - kr * r - kb * b) / (1 - kr - kb), b], 0, 255)


@pytest.mark.parametrize("pix_fmt", ["yuv420p10le", "yuv422p10le", "yuv444p", "yuv444p10le"])
def test_10_bit_and_444_sources_decode_to_their_levels(tmp_path, pix_fmt):
    """Flat colours: each decoded pixel is the exact conversion of the decoded samples,
    rounded (swscale's direct 8-bit path was off by 2 levels for 10-bit)."""
    colours = [(40, 40, 40), (255, 255, 255), (200, 60, 120), (16, 140, 235)]
    path = tmp_path / f"{pix_fmt}.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for colour in colours:
            rgb = np.broadcast_to(np.array(colour, np.uint8), (48, 64, 3)).copy()
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)))
        out.mux(stream.encode(None))
    with av.open(str(path)) as container:
        samples = [_plane_means(f) for f in container.decode(video=0)]
        bits = container.streams.video[0].codec_context.format.components[0].bits
    decoded = decode_span(str(path), 0, len(colours))
    for frame, (y, u, v) in zip(decoded, samples):
        exact = _bt601_limited(y, u, v, bits)
        assert np.abs(frame.reshape(-1, 3).astype(float) - exact).max() <= 0.5 + 1e-6, (frame[0, 0], exact)


def test_decode_span_seeks_back_when_a_seek_lands_past_start(monkeypatch, video, reference):
    # Some demuxers' indexes place the keyframe after the requested frame: simulate one.
    seeks = []
    real_seek = decode._seek

    def late_seek(container, stream, rate, index):
        seeks.append(index)
        real_seek(container, stream, rate, index + GOP if len(seeks) == 1 else index)

    monkeypatch.setattr(decode, "_seek", late_seek)
    np.testing.assert_array_equal(decode_span(video, 12, 16), reference[12:16])
    assert len(seeks) > 1 and seeks[-1] <= 10


def test_decode_span_rejects_bad_spans(video):
    for start, stop in [(-1, 3), (4, 4), (5, 3)]:
        with pytest.raises(ValueError, match="span"):
            decode_span(video, start, stop)
    with pytest.raises(VideoError, match=r"truncated: got 2 of 7 frames from frame 28"):
        decode_span(video, 28, 35)


# ---------------------------------------------------------------------------------------
# encode_video


def test_encode_keeps_every_frame_at_the_given_rate(tmp_path, frames, reference):
    path = str(tmp_path / "a" / "b" / "out.mp4")  # parent folders are created
    assert encode_video((f for f in frames), path, FPS, gop=GOP).frames == FRAMES
    assert count_packets(path) == FRAMES
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == FPS and stream.frames == FRAMES
        pts = [f.pts * stream.time_base for f in container.decode(stream)]
    assert pts == [i / FPS for i in range(FRAMES)]  # one frame per input, none dropped or doubled
    assert psnr(full_decode(path), frames) > 35  # crf 18
    # A float rate becomes the fraction it stands for.
    encode_video(iter(frames[:3]), path, 29.97)
    assert Fraction(probe(path).fps_num, probe(path).fps_den) == Fraction(2997, 100)


def test_encode_odd_size(tmp_path):
    odd = make_frames(9, (47, 63))
    path = str(tmp_path / "odd.mp4")
    assert encode_video(iter(odd), path, 25).frames == 9
    info = probe(path)
    assert (info.frames, info.height, info.width) == (9, 47, 63)
    decoded = full_decode(path)
    assert decoded.shape == odd.shape and psnr(decoded, odd) > 35
    with av.open(path) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_encode_is_deterministic(tmp_path, ext):
    # Twice here and once in a fresh process: a retried task must write the same bytes.
    # Rotating content: it made libx264's macroblock tree give different bytes almost every run.
    frames = make_frames(FRAMES, SIZE, shift=(1.5, 0.5), angle_deg=1.0)
    np.save(tmp_path / "frames.npy", frames)
    paths = [tmp_path / f"{name}.{ext}" for name in "abc"]
    for path in paths[:2]:
        encode_video(iter(frames), str(path), FPS, gop=GOP)
    subprocess.run([sys.executable, "-c", "import sys, numpy as np; from fractions import Fraction; "
                    "from raywarp.pipeline.encode import encode_video; "
                    f"encode_video(np.load(sys.argv[1]), sys.argv[2], Fraction({FPS.numerator}, {FPS.denominator}), "
                    f"gop={GOP})", str(tmp_path / "frames.npy"), str(paths[2])], check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()


def test_encode_rejects_empty_and_inconsistent_frames(tmp_path, frames):
    path = tmp_path / "out.mp4"
    with pytest.raises(ValueError, match="no frames"):
        encode_video(iter([]), str(path), FPS)
    with pytest.raises(ValueError, match=r"frames\[2\]: shape \(47, 64, 3\) differs"):
        encode_video([frames[0], frames[1], frames[2, :47]], str(path), FPS)
    with pytest.raises(ValueError, match=r"frames\[0\]: expected a \(H, W, 3\) uint8 array"):
        encode_video([frames[0].astype(np.float32)], str(path), FPS)
    assert not path.exists()


# ---------------------------------------------------------------------------------------
# list_videos


@pytest.fixture
def tree(tmp_path):
    """A folder of (empty) files: listing looks at names only."""
    for name in ["b.mp4", "a.MOV", "sub/c.mkv", "sub/deeper/d.webm", "notes.txt", "sub/e.srt", "music.m4a", "still.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    return tmp_path


def test_list_a_directory_recursively_by_extension(tree):
    expected = [str(tree / n) for n in ["a.MOV", "b.mp4", "sub/c.mkv", "sub/deeper/d.webm"]]
    listing = list_videos(str(tree))
    assert listing.videos == expected
    # Every other file is named with the reason it was not taken.
    assert listing.skipped == {str(tree / "notes.txt"): "not a video file (.txt)",
                               str(tree / "sub/e.srt"): "not a video file (.srt)",
                               str(tree / "music.m4a"): "an audio file (.m4a): no video to restore",
                               str(tree / "still.png"): "a still image (.png): raywarp restores videos, not single "
                                                        "images or image sequences"}
    # Storage options are for remote filesystems; a local source ignores them.
    assert list_videos(str(tree), {"key": "k", "secret": "s"}).videos == expected


def test_list_a_glob_keeps_every_match(tree):
    assert list_videos(str(tree / "sub" / "*")).videos == [str(tree / "sub" / n) for n in ["c.mkv", "e.srt"]]
    assert list_videos(str(tree / "**" / "*.mkv")).videos == [str(tree / "sub" / "c.mkv")]


def test_list_a_list_file(tree, monkeypatch):
    (tree / "lists").mkdir()
    (tree / "lists" / "videos.lst").write_text(
        "# one URI per line\n\n../b.mp4\n  ../sub/c.mkv  \ns3://bucket/k/x.mp4\n/abs/y.mov\n# ../a.MOV\n")
    monkeypatch.chdir(tree / "sub" / "deeper")  # relative entries follow the list file, not the cwd
    assert list_videos(str(tree / "lists" / "videos.lst")).videos == sorted(
        [str(tree / "b.mp4"), str(tree / "sub" / "c.mkv"), "s3://bucket/k/x.mp4", "/abs/y.mov"])


def test_list_a_single_file_as_an_absolute_path(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert list_videos("sub/c.mkv").videos == [str(tree / "sub" / "c.mkv")]


def test_storage_options_go_to_remote_filesystems_only(tmp_path):
    options = {"key": "k", "secret": "s"}
    local, path = filesystem(str(tmp_path / "v.mp4"), options)
    assert isinstance(local, LocalFileSystem) and local.storage_options == {} and path == str(tmp_path / "v.mp4")
    remote, key = filesystem("s3://bucket/in/v.mp4", options)
    assert remote.storage_options == options and key == "bucket/in/v.mp4"


def test_list_nothing_raises(tree):
    for src in [tree / "missing", tree / "missing.mp4", tree / "*.avi"]:
        with pytest.raises(FileNotFoundError, match=str(src).replace("*", r"\*")):
            list_videos(str(src))
    (tree / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no videos"):
        list_videos(str(tree / "empty"))


# ---------------------------------------------------------------------------------------
# S3


def test_s3_list_probe_decode_encode(s3_bucket, video, reference, frames):
    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    fs.put_file(video, f"{bucket}/in/day1/coffee.mp4")
    fs.pipe_file(f"{bucket}/in/readme.txt", b"not a video")
    listing = list_videos(f"s3://{bucket}/in", options)
    assert listing == ([f"s3://{bucket}/in/day1/coffee.mp4"], {f"s3://{bucket}/in/readme.txt": "not a video file (.txt)"})
    uri, = list_videos(f"s3://{bucket}/in/*/*.mp4", options).videos
    fs.pipe_file(f"{bucket}/lists/todo.txt", b"# relative to the list\n../in/day1/coffee.mp4\n")
    assert list_videos(f"s3://{bucket}/lists/todo.txt", options).videos == [uri]

    info = probe(uri, options)
    assert (info.frames, info.width, info.height) == (FRAMES, 64, 48)
    assert info.size_bytes == os.path.getsize(video)
    etag = fs.info(uri)["ETag"].strip('"')
    assert info.fingerprint == fingerprint(uri, options) == f"{info.size_bytes}-{etag}"
    np.testing.assert_array_equal(decode_span(uri, 8, 17, options), reference[8:17])

    dst = f"s3://{bucket}/out/coffee.mp4"
    assert encode_video(iter(frames[:10]), dst, FPS, options, gop=GOP).frames == 10
    assert probe(dst, options).frames == 10

    # Rewriting the object with different content changes its fingerprint.
    before = fingerprint(uri, options)
    fs.put_file(video, f"{bucket}/in/day1/coffee.mp4")
    assert fingerprint(uri, options) == before  # same bytes, same ETag
    fs.pipe_file(f"{bucket}/in/day1/coffee.mp4", fs.cat_file(dst))
    assert fingerprint(uri, options) != before
