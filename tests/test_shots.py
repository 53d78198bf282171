"""Shots: cuts found at their exact frames on a film of real photographs, in one pass or
many spans; shot digests independent of the film around the shot; videos the plan cannot
trust (a variable frame rate) refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raywarp import synthetic
from raywarp.pipeline import plan as rplan
from raywarp.pipeline import shots as rshots
from raywarp.pipeline.config import RunConfig
from raywarp.pipeline.source import VideoError
from videos import probed, write_lossless

SIZE = (32, 32)
# (photo, frames, motion): a pan, a zoom shorter than a clip, a one-frame shot, a rotation.
SHOTS = [("astronaut", 11, {"shift": (1.0, 0.0)}), ("coffee", 3, {"zoom": 1.05}), ("chelsea", 1, {}),
         ("rocket", 9, {"angle_deg": 3.0}), ("coffee", 6, {"shift": (0.0, 1.0)})]


def shot_frames(photo: str, frames: int, size=SIZE, **motion) -> np.ndarray:
    video, _ = synthetic.affine_video(photo, frames, size, synthetic.affine_motion(size, **motion))
    return (video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    root = tmp_path_factory.mktemp("film")
    parts = [shot_frames(photo, n, **motion) for photo, n, motion in SHOTS]
    write_lossless(root / "film.mkv", np.concatenate(parts))
    for k, part in enumerate(parts):
        write_lossless(root / f"shot{k}.mkv", part)
    bounds = np.cumsum([0] + [len(p) for p in parts])
    return root, [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def scan(path, frames: int) -> list[tuple[int, int, str]]:
    spans = [rshots.scan_span(str(path), a, b, 27.0) for a, b in rshots.scan_spans(frames)]
    return rshots.shots(frames, spans)


def test_cuts_are_found_at_the_exact_frames(film):
    root, expected = film
    found = scan(root / "film.mkv", expected[-1][1])
    assert [(a, b) for a, b, _ in found] == expected


def test_spans_scanned_apart_find_the_same_shots(film, monkeypatch):
    """Cuts at a span's first frame and inside it, one-frame shots across span edges."""
    root, expected = film
    whole = scan(root / "film.mkv", expected[-1][1])
    for span in (1, 4, 11, 14):
        monkeypatch.setattr(rshots, "SCAN_SPAN", span)
        assert scan(root / "film.mkv", expected[-1][1]) == whole, span


def test_a_shot_has_the_same_content_digest_in_the_film_and_alone(film):
    root, expected = film
    in_film = scan(root / "film.mkv", expected[-1][1])
    for k, (a, b) in enumerate(expected):
        assert scan(root / f"shot{k}.mkv", b - a) == [(0, b - a, in_film[k][2])]
    assert len({content for _, _, content in in_film}) == len(in_film)  # same photo, other shot: other digest
    seeds = {rplan.shot_seed(RunConfig(), c) for _, _, c in in_film}
    assert len(seeds) == len(in_film) and seeds.isdisjoint({rplan.shot_seed(RunConfig(seed=1), c) for _, _, c in in_film})


def test_no_unit_spans_a_cut_and_every_frame_is_owned_once(film):
    root, expected = film
    config = RunConfig(clip_len=7, overlap=2)
    units = rplan.plan_video(probed(expected[-1][1], "film.mkv", "v"), scan(root / "film.mkv", expected[-1][1]), config)
    for u in units:
        a, b = expected[u.shot]
        assert (u.shot_start, u.shot_stop) == (a, b) and a <= u.start < u.stop <= b
    assert sorted(f for u in units for f in range(u.out_start, u.out_stop)) == list(range(expected[-1][1]))
    assert len({u.seed for u in units}) == len(expected)


def test_variable_frame_rate_is_refused_with_the_reason(tmp_path):
    path = write_lossless(tmp_path / "vfr.mkv", shot_frames("coffee", 8), times_ms=[0, 40, 80, 120, 240, 280, 320, 360])
    with pytest.raises(VideoError, match="variable frame rate"):
        rshots.scan_span(str(path), 0, 8, 27.0)


def test_a_scan_cut_short_keeps_the_shots_before_the_damage(film):
    root, expected = film
    data = (root / "film.mkv").read_bytes()
    cut = root.parent / "cut.mkv"
    cut.write_bytes(data[: int(0.6 * len(data))])
    result = rshots.scan_span(str(cut), 0, expected[-1][1], 27.0)
    assert result.error and result.cuts == [a for a, _ in expected if a in result.cuts]
    assert result.cuts[:2] == [0, 11]
