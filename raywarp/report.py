"""`raywarp report DST`: one self-contained HTML page showing what a run did to each video.

Reads the manifest under ``DST/_raywarp`` (local or s3://), the source videos and the
outputs, and writes a single HTML file whose images are inline PNG data URIs: it opens
anywhere, with no other file and no network. Drawn with matplotlib (Agg, through
`Figure` alone: no pyplot state). The page holds:

- the run: videos done / failed / pending, the config that matters for the pictures,
  the stage seconds of every video (a chart), and every failure with its reason: failed
  units, failed videos, videos that never produced an output;
- per video with an output:
  1. input (bicubic to the output size) beside output: the first, middle and last
     sampled frames, and a centre detail of the middle one, pixels magnified;
  2. x–t slices: the middle row of every sampled frame stacked in time, input against
     output; flicker shows as streaks across the slice;
  3. temporal consistency: the warping error (Lai et al.,
     `metrics.warping_error_per_pair`) between consecutive output frames along the flow
     estimated on the input (DIS on the source frames, resized to the output grid), and
     the same for the upscaled input as a reference; seams (where units meet) and cuts
     (shot starts) as vertical lines. Pairs across a cut are not measured: no flow
     links two shots. Pairs the worker found no motion between (restored uncoupled:
     no guidance or propagation across them, their noise chain restarted) are marked
     and listed;
  4. the stage seconds of its units' latest attempts (decode, flow, sample, write) and
     of its encode.

Bounded work for long films: a video of at most ``RUNS * SPAN`` frames is read whole;
a longer one as ``RUNS`` runs of ``SPAN`` consecutive frames spread evenly, so the
slices and curves show those runs (separated) and a film costs about 240 decoded frames
(and each span's lead-in from its keyframe) whatever its length. Frames are read
``SPAN`` at a time (one `decode_span` each) and measured area-averaged to at most
``MEASURE_SIDE`` px on their longer side; only the shown frames and one row of each are
kept, so memory does not grow with length or beyond one span of full-size frames.
"""

from __future__ import annotations

import base64
import html
import io
import json
import posixpath
import re
import struct
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from fsspec.implementations.local import LocalFileSystem
from matplotlib.figure import Figure

from raywarp import flow as rflow
from raywarp import metrics
from raywarp.pipeline.decode import decode_span
from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.source import filesystem
from raywarp.tensors import frames_to_tensor, tensor_to_frames

RUNS = 10  # runs of consecutive frames read from a long film
SPAN = 24  # frames of one read (and of one run of a long film)
MEASURE_SIDE = 1024  # longer side, px, at which frames are measured and sliced
FALLBACKS_LISTED = 20  # frame pairs restored without flow named on the page; the rest counted
DETAIL = 160  # side, in output px, of the centre detail
STAGES = ("decode", "flow", "sample", "write")
STAGE_COLOURS = {"decode": "#8da0cb", "flow": "#66c2a5", "sample": "#fc8d62", "write": "#e5c494", "encode": "#a6a6a6"}
DPI = 100
_UNIT_ID = re.compile(r"unit [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} ")


class NoRunError(FileNotFoundError):
    """DST holds no raywarp run."""


@dataclass
class _Sample:
    """What was measured of one video, one entry per sampled frame (N of them, in order)."""

    index: np.ndarray  # (N,) frame numbers
    error_out: np.ndarray  # (N,) warping error of the pair (index − 1, index) of the output; NaN: not measured
    error_in: np.ndarray  # (N,) the same of the upscaled input
    rows_in: np.ndarray  # (N, w, 3) uint8: each frame's middle row, upscaled input
    rows_out: np.ndarray  # (N, w, 3) uint8: the same of the output
    shown: dict[int, tuple[np.ndarray, np.ndarray]]  # frame number -> (input, output) (h, w, 3) uint8


def write_report(dst: str, out: str | None = None, storage_options: dict | None = None) -> str:
    """Write the report of the run under `dst` to `out` (default ``DST/_raywarp/report.html``;
    a local path or a URI); returns where it went. NoRunError if `dst` holds no run."""
    manifest = Manifest(dst, storage_options)
    info = manifest.run_info()
    if info is None:
        raise NoRunError(f"no raywarp run under {dst} (no {manifest.uri('run.json')})")
    page = _page(manifest, info, storage_options)
    out = out or manifest.uri("report.html")
    fs, path = filesystem(out, storage_options)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, page.encode())
    return path if isinstance(fs, LocalFileSystem) else out


# -- the page -------------------------------------------------------------------------


def _page(manifest: Manifest, info: dict, storage_options: dict | None) -> str:
    videos = _rows(manifest, "videos")
    units = _rows(manifest, "clips")
    shots = _rows(manifest, "shots")
    latest = manifest.latest()
    known = {v["video_id"] for v in videos}
    videos += [{"video_id": r["id"], "uri": r["uri"]} for r in latest.values() if r["kind"] == "video" and r["id"] not in known]
    names = _names([v["uri"] for v in videos])
    videos.sort(key=lambda v: names[v["uri"]])
    units_of, cuts_of = {v["video_id"]: [] for v in videos}, {v["video_id"]: [] for v in videos}
    for u in sorted(units, key=lambda u: u["out_start"]):
        units_of[u["video_id"]].append(u)
    for shot in sorted(shots, key=lambda s: s["start"]):
        if shot["start"] > 0:
            cuts_of[shot["video_id"]].append(shot["start"])
    times = {v["video_id"]: _stage_seconds(units_of[v["video_id"]], latest.get(v["video_id"]), latest) for v in videos}
    state = {v["video_id"]: (latest.get(v["video_id"]) or {}).get("status", "pending") for v in videos}
    config = info.get("config", {})

    body = [f"<h1>raywarp report: {_e(manifest.dst)}</h1>", _summary(info, videos, units, state, latest)]
    timed = [v for v in videos if sum(times[v["video_id"]].values()) > 0]
    if timed:
        body.append("<h2>Stage seconds</h2>" + _img(_stage_figure(
            [names[v["uri"]] for v in timed], [times[v["video_id"]] for v in timed]), "stage seconds per video"))
    body.append(_failures(latest, units, names))
    for v in videos:
        body.append(_section(v, names[v["uri"]], state[v["video_id"]], units_of[v["video_id"]], cuts_of[v["video_id"]],
                             times[v["video_id"]], latest, config, storage_options))
    return _HTML.format(title=_e(f"raywarp report: {manifest.dst}"), body="\n".join(body),
                        made=_e(time.strftime("%Y-%m-%d %H:%M:%S %Z")))


def _summary(info: dict, videos: list[dict], units: list[dict], state: dict, latest: dict) -> str:
    config = info.get("config", {})
    sampler = config.get("sampler", {})
    videos_in = _counts(state[v["video_id"]] for v in videos)
    units_in = _counts((latest.get(u["id"]) or {}).get("status", "pending") for u in units)
    facts = [
        ("videos", videos_in),
        ("units", units_in),
        ("task", f"{config.get('task')}" + (f" ×{config.get('scale')}" if config.get("task") == "sr" else "")
         + (f", mask {config.get('mask')}" if config.get("mask") else "")),
        ("model", f"{config.get('model')}; {sampler.get('mode')}, {sampler.get('steps')} steps, "
                  f"guidance {sampler.get('guidance')}, strength {sampler.get('strength')}"),
        ("clips", f"{config.get('clip_len')} frames, {config.get('overlap')} shared at each seam"),
        ("attempts", ", ".join(time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) for t in info.get("attempts", []))),
    ]
    return "<table class=facts>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>"


def _counts(states) -> str:
    states = list(states)
    return ", ".join(f"{states.count(s)} {s}" for s in ("done", "failed", "pending"))


def _failures(latest: dict, units: list[dict], names: dict) -> str:
    """Every failed unit and video, by video and frame, with the reason recorded."""
    unit_of = {u["id"]: u for u in units}
    failed = [r for r in latest.values() if r["status"] == "failed"]
    if not failed:
        return "<h2>Failures</h2><p>None.</p>"

    def what(row):
        u = unit_of.get(row["id"])
        return f"{row['kind']} frames {u['start']}–{u['stop'] - 1}" if u else row["kind"]

    def order(row):
        u = unit_of.get(row["id"])
        return names.get(row["uri"], row["uri"]), u is None, (u or {}).get("start", 0)

    rows = "".join(
        f"<tr class=failure><td>{_e(names.get(r['uri'], r['uri']))}</td><td>{_e(what(r))}</td>"
        f"<td>{r['attempt']}</td><td class=reason>{_e(_readable(r['error'] or 'no reason recorded'))}</td></tr>"
        for r in sorted(failed, key=order))
    return ("<h2>Failures</h2><table class=failures><tr><th>video</th><th>what</th><th>attempt</th><th>reason</th></tr>"
            f"{rows}</table>")


def _readable(error: str) -> str:
    """`error` without the unit ids it names: the kind and frames that follow them say more."""
    return _UNIT_ID.sub("unit ", error)


def _section(video: dict, name: str, state: str, units: list[dict], cuts: list[int], times: dict, latest: dict,
             config: dict, storage_options: dict | None) -> str:
    vid = video["video_id"]
    parts = [f"<section class=video id='{_e(vid)}'><h2>{_e(name)} <span class='state {state}'>{state}</span></h2>",
             f"<p class=uri>source {_e(video['uri'])}" + (f"<br>output {_e(video['output'])}" if state == "done" else "")
             + "</p>"]
    if "frames" not in video:  # never probed: its failure is all there is
        parts.append(f"<p>No output: {_e((latest.get(vid) or {}).get('error') or '')}</p></section>")
        return "\n".join(parts)
    seams = sorted({u["out_start"] for u in units} - {0, *cuts})
    done = sum((latest.get(u["id"]) or {}).get("status") == "done" for u in units)
    fallbacks = _fallback_pairs(units, latest)
    parts += [f"<p>{video['frames']} frames at {video['fps']:.3g} fps · {len(cuts) + 1} shot(s) · {len(units)} units "
              f"({sum(u['kind'] == 'seam' for u in units)} seams), {done} done</p>", _seconds_table(times, video["frames"])]
    if fallbacks:
        listed = ", ".join(f"{t}–{t + 1}" for t in fallbacks[:FALLBACKS_LISTED])
        more = f" and {len(fallbacks) - FALLBACKS_LISTED} more" if len(fallbacks) > FALLBACKS_LISTED else ""
        parts.append(f"<p class=fallback>{len(fallbacks)} frame pair(s) with no motion found between them, restored "
                     f"without flow coupling (no guidance or propagation across them; the noise restarted): frames "
                     f"{_e(listed)}{more}.</p>")
    if state != "done":
        reason = (latest.get(vid) or {}).get("error") or "not written yet"
        parts.append(f"<p>No output: {_e(reason)}</p></section>")
        return "\n".join(parts)
    label = f"input, bicubic ×{config.get('scale')}" if config.get("task") == "sr" else "input"
    try:
        parts += _pictures(video, name, label, seams, cuts, fallbacks, storage_options)
    except Exception as exc:  # noqa: BLE001 - one unreadable video must not cost the whole report
        parts.append(f"<p>Cannot show the frames: {_e(type(exc).__name__)}: {_e(exc)}</p>")
    return "\n".join(parts) + "</section>"


def _fallback_pairs(units: list[dict], latest: dict) -> list[int]:
    """Frames t of a video whose pair (t, t+1) its units' latest rows report restored
    without flow (`fallback_pairs` in their metrics), in order."""
    pairs = set()
    for u in units:
        row = latest.get(u["id"]) or {}
        pairs.update(json.loads(row.get("metrics") or "{}").get("fallback_pairs", []))
    return sorted(pairs)


def _pictures(video: dict, name: str, label: str, seams: list[int], cuts: list[int], fallbacks: list[int],
              storage_options: dict | None) -> list[str]:
    """The frames, detail, x–t slices and consistency plot of a video with an output."""
    sample = _measure(video, cuts, storage_options)
    middle = int(sample.index[len(sample.index) // 2])
    measured = np.isfinite(sample.error_out)
    if measured.any():
        mean_out, mean_in = sample.error_out[measured].mean(), sample.error_in[measured].mean()
        consistency = (f"<p>Mean warping error: output {mean_out:.5f}, {_e(label)} {mean_in:.5f} "
                       f"({_ratio(mean_out, mean_in)}). Lower is steadier; measured along flow estimated on the input.</p>")
    else:
        consistency = "<p>Not measured: no two consecutive frames within a shot.</p>"
    parts = [
        "<h3>Input and output</h3>", _img(_frames_figure(sample, label, video["fps"]), f"{name}: input and output frames"),
        _detail(video, middle, label, storage_options, name),
        "<h3>x–t slices (middle row through time)</h3>",
        _img(_slices_figure(sample, seams, cuts, label), f"{name}: x-t slices"),
        "<p class=note>Seams (orange) and cuts (red) are ticked at both edges. Streaks that appear in the output "
        "and not in the input are flicker the restoration added.</p>",
        "<h3>Temporal consistency</h3>", consistency,
        _img(_consistency_figure(sample, seams, cuts, fallbacks, label), f"{name}: warping error per frame"),
    ]
    if len(sample.index) < video["frames"]:
        parts.append(f"<p class=note>{len(sample.index)} of {video['frames']} frames sampled, in runs of {SPAN} "
                     "consecutive frames spread over the film.</p>")
    return parts


def _ratio(out: float, ref: float) -> str:
    return f"{out / ref:.2f}× the input's" if ref > 0 else "the input does not change"


def _seconds_table(times: dict, frames: int) -> str:
    total = sum(times.values())
    cells = "".join(f"<td>{times[k]:.1f}</td>" for k in times)
    return ("<table class=seconds><tr>" + "".join(f"<th>{_e(k)} s</th>" for k in times) + "<th>total s</th><th>s/frame</th></tr>"
            f"<tr>{cells}<td>{total:.1f}</td><td>{total / max(frames, 1):.2f}</td></tr></table>")


# -- measuring ------------------------------------------------------------------------


def sampled_spans(frames: int) -> list[tuple[int, int]]:
    """[start, stop) of every read of a video of `frames` frames: spans of at most SPAN
    frames, each starting on the last frame of the one before it where they continue one
    run (so every pair of consecutive frames in a run is measured once)."""
    if frames <= RUNS * SPAN:
        return [(s, min(s + SPAN, frames)) for s in range(0, max(frames - 1, 1), SPAN - 1)]
    return [(int(s), int(s) + SPAN) for s in np.linspace(0, frames - SPAN, RUNS).round()]


def _measure(video: dict, cuts: list[int], storage_options: dict | None) -> _Sample:
    """Read the sampled frames of the video and its output and measure them (see the module docstring)."""
    spans = sampled_spans(int(video["frames"]))
    # A span's first frame was read already, as the last of the span before, where they continue one run.
    skips = [int(k > 0 and spans[k - 1][1] - 1 == start) for k, (start, _) in enumerate(spans)]
    index = [t for (start, stop), skip in zip(spans, skips) for t in range(start + skip, stop)]
    wanted = {index[0], index[len(index) // 2], index[-1]}
    error_out, error_in, rows_in, rows_out, shown = [], [], [], [], {}
    for (start, stop), skip in zip(spans, skips):
        source = decode_span(video["uri"], start, stop, storage_options, rotation=int(video["rotation"]))
        output = _shrunk(decode_span(video["output"], start, stop, storage_options))
        size = output.shape[1:3]
        lo = frames_to_tensor(_shrunk(source))
        up = F.interpolate(lo, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        hi = frames_to_tensor(output)
        errors_out, errors_in = _pair_errors(lo, up, hi, start, cuts)
        error_out += errors_out[skip:]
        error_in += errors_in[skip:]
        up_frames = tensor_to_frames(up)
        rows_in.append(up_frames[skip:, size[0] // 2])
        rows_out.append(output[skip:, size[0] // 2])
        shown.update({t: (up_frames[t - start], output[t - start]) for t in wanted if start <= t < stop})
    return _Sample(np.array(index), np.array(error_out), np.array(error_in), np.concatenate(rows_in),
                   np.concatenate(rows_out), dict(sorted(shown.items())))


def _shrunk(frames: np.ndarray) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 area-averaged so the longer side is at most MEASURE_SIDE."""
    h, w = frames.shape[1:3]
    scale = MEASURE_SIDE / max(h, w)
    if scale >= 1:
        return frames
    size = (max(round(w * scale), 1), max(round(h * scale), 1))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def _pair_errors(lo: torch.Tensor, up: torch.Tensor, hi: torch.Tensor, start: int, cuts: list[int]):
    """Warping error of (t−1, t) for every frame t of a span, output and upscaled input,
    along flow estimated on the input `lo` (T, 3, h, w); NaN for the span's first frame
    and across a cut. Returns two lists of T floats."""
    nan = [float("nan")] * lo.shape[0]
    if lo.shape[0] < 2:
        return nan, nan
    method = "dis" if max(lo.shape[-2:]) >= 12 else "farneback"  # DIS refuses smaller frames
    size = tuple(hi.shape[-2:])
    fwd = rflow.resize_flow(rflow.estimate(lo[:-1], lo[1:], method=method), size)
    bwd = rflow.resize_flow(rflow.estimate(lo[1:], lo[:-1], method=method), size)
    across = torch.tensor([start + t in cuts for t in range(1, lo.shape[0])])
    out, ref = (torch.where(across, float("nan"), metrics.warping_error_per_pair(x, fwd, bwd)) for x in (hi, up))
    return nan[:1] + out.tolist(), nan[:1] + ref.tolist()


def _stage_seconds(units: list[dict], video_row: dict | None, latest: dict) -> dict[str, float]:
    """Seconds per stage summed over the units' latest rows, and the video's encode."""
    rows = [latest[u["id"]] for u in units if u["id"] in latest]
    seconds = {s: sum(r[f"seconds_{s}"] or 0.0 for r in rows) for s in STAGES}
    seconds["encode"] = (video_row or {}).get("seconds_write") or 0.0
    return seconds


# -- figures --------------------------------------------------------------------------


def _figure(width_px: int, height_px: int) -> Figure:
    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")


def _frames_figure(sample: _Sample, label: str, fps: float) -> Figure:
    """Input above output, one column per shown frame."""
    h, w = next(iter(sample.shown.values()))[1].shape[:2]
    panel = 300
    fig = _figure(len(sample.shown) * panel + 60, int(2 * panel * h / w) + 60)
    axes = fig.subplots(2, len(sample.shown), squeeze=False)
    for col, (t, (up, out)) in enumerate(sample.shown.items()):
        for row, image in enumerate((up, out)):
            ax = axes[row, col]
            ax.imshow(image, interpolation="nearest" if w < panel else "antialiased")
            ax.set_xticks([]), ax.set_yticks([])
        axes[0, col].set_title(f"frame {t} ({t / fps:.2f} s)", fontsize=10)
    axes[0, 0].set_ylabel(label), axes[1, 0].set_ylabel("output")
    return fig


def _detail(video: dict, t: int, label: str, storage_options: dict | None, name: str) -> str:
    """The centre DETAIL × DETAIL output pixels of frame `t`, input beside output, magnified
    (nothing when the whole frame is no larger: the frames above show it all)."""
    out = decode_span(video["output"], t, t + 1, storage_options)[0]
    h, w = out.shape[:2]
    if max(h, w) <= DETAIL:
        return ""
    source = frames_to_tensor(decode_span(video["uri"], t, t + 1, storage_options, rotation=int(video["rotation"])))
    up = tensor_to_frames(F.interpolate(source, size=(h, w), mode="bicubic", align_corners=False))[0]
    y0, x0 = max((h - DETAIL) // 2, 0), max((w - DETAIL) // 2, 0)
    crop = (slice(y0, y0 + DETAIL), slice(x0, x0 + DETAIL))
    ch, cw = out[crop].shape[:2]
    fig = _figure(2 * 360 + 40, int(360 * ch / cw) + 50)
    for ax, image, title in zip(fig.subplots(1, 2), (up[crop], out[crop]), (label, "output")):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{title}: frame {t}, centre {cw}×{ch} px", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    return _img(fig, f"{name}: centre detail of frame {t}")


def _runs(index: np.ndarray) -> list[slice]:
    """Positions of each run of consecutive frame numbers in `index`."""
    breaks = [0, *np.flatnonzero(np.diff(index) != 1) + 1, len(index)]
    return [slice(a, b) for a, b in zip(breaks[:-1], breaks[1:])]


def _slices_figure(sample: _Sample, seams: list[int], cuts: list[int], label: str) -> Figure:
    """The middle row of each sampled frame stacked downwards, input beside output;
    runs of a long film separated by white lines, frame numbers on the left, seams and
    cuts ticked on both edges (between the rows they separate)."""
    n = len(sample.index)
    fig = _figure(2 * 420 + 80, int(np.clip(6 * n, 200, 520)) + 60)
    runs = _runs(sample.index)
    ticks = [r.start for r in runs] if len(runs) > 1 else sorted(set(np.linspace(0, n - 1, 6).round().astype(int)))
    for ax, rows, title in zip(fig.subplots(1, 2, sharey=True), (sample.rows_in, sample.rows_out), (label, "output")):
        ax.imshow(rows, aspect="auto", interpolation="nearest", extent=(0, rows.shape[1], n - 0.5, -0.5))
        for r in runs[1:]:
            ax.axhline(r.start - 0.5, color="white", linewidth=2)
        for frames, colour in ((seams, "#e08a00"), (cuts, "#c0392b")):
            for row in np.flatnonzero(np.isin(sample.index, frames)):
                for edge in ((0, 0.04), (0.96, 1)):
                    ax.axhline(row - 0.5, *edge, color=colour, linewidth=2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (px, middle row)")
        ax.set_yticks(ticks, [str(sample.index[t]) for t in ticks])
    fig.axes[0].set_ylabel("frame")
    return fig


def _consistency_figure(sample: _Sample, seams: list[int], cuts: list[int], fallbacks: list[int],
                        label: str) -> Figure:
    """Warping error per frame (the pair ending there), one panel per run; seams, cuts and
    pairs restored without flow marked."""
    runs = _runs(sample.index)
    fig = _figure(960, 300)
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    for ax, run in zip(axes, runs):
        frames = sample.index[run]
        ax.plot(frames - 0.5, sample.error_in[run], color="#999999", marker=".", label=label)
        ax.plot(frames - 0.5, sample.error_out[run], color="#1f5fa8", marker=".", label="output")
        lo, hi = frames[0] - 1, frames[-1]
        for b in seams:
            if lo < b <= hi:
                ax.axvline(b - 0.5, color="#e08a00", linestyle="--", linewidth=1, label="seam (units meet)")
        for c in cuts:
            if lo < c <= hi:
                ax.axvline(c - 0.5, color="#c0392b", linewidth=1.5, label="cut (shot start)")
        for t in fallbacks:  # the pair (t, t+1), drawn where the pair ending at t+1 is
            if lo < t + 1 <= hi:
                ax.axvspan(t, t + 1, color="#bbbbbb", alpha=0.5, linewidth=0, label="no motion found (uncoupled)")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("frame")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[0].set_ylabel("warping error (frame t−1 → t)")
    axes[0].set_ylim(bottom=0)
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="outside upper center", ncol=len(handles), fontsize=9)
    return fig


def _stage_figure(names: list[str], times: list[dict]) -> Figure:
    """One horizontal bar per video, its seconds stacked by stage."""
    fig = _figure(960, 90 + 30 * len(names))
    ax = fig.subplots()
    left = np.zeros(len(names))
    for stage, colour in STAGE_COLOURS.items():
        seconds = np.array([t[stage] for t in times])
        ax.barh(names, seconds, left=left, color=colour, label=stage)
        left += seconds
    ax.invert_yaxis()
    ax.set_xlabel("seconds (units' latest attempts, summed)")
    fig.legend(loc="outside upper center", ncol=len(STAGE_COLOURS), fontsize=9)
    return fig


# -- html -----------------------------------------------------------------------------


def _img(fig: Figure, alt: str) -> str:
    """`fig` as an inline PNG shown at its natural size (one image pixel per CSS pixel)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    png = buf.getvalue()
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    data = base64.b64encode(png).decode()
    return f"<img src='data:image/png;base64,{data}' width={width} height={height} alt='{_e(alt)}'>"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _rows(manifest: Manifest, table: str) -> list[dict]:
    try:
        return manifest.read_table(table).to_pylist()
    except FileNotFoundError:  # a run stopped before planning
        return []


def _names(uris: list[str]) -> dict[str, str]:
    """{uri: its path below the folder all sources share}: short and unique names."""
    paths = {u: u.split("://", 1)[-1] for u in uris}
    try:
        root = posixpath.commonpath([posixpath.dirname(p) for p in paths.values()]) if len(paths) > 1 else ""
    except ValueError:  # local and remote sources mixed
        root = ""
    return {u: posixpath.relpath(p, root) if root else posixpath.basename(p) for u, p in paths.items()}


_HTML = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; }}
img {{ max-width: none; display: block; margin: 8px 0; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td.reason {{ font-family: ui-monospace, monospace; font-size: 12px; max-width: 720px; }}
table.seconds {{ display: inline-table; margin: 0 0 0 8px; vertical-align: middle; }}
section.video {{ border-top: 2px solid #444; margin-top: 28px; }}
.state {{ font-size: 13px; padding: 1px 8px; border-radius: 8px; color: white; vertical-align: middle; }}
.done {{ background: #2e7d32; }} .failed {{ background: #c0392b; }} .pending {{ background: #888; }}
.uri, .note {{ color: #666; font-size: 12px; }}
</style></head>
<body>
{body}
<p class=note>Made {made} by raywarp report.</p>
</body></html>
"""
