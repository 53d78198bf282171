"""What a resumed run does with what storage lost or damaged since: every payload is read
against the checksum its commit recorded, a unit whose payload is gone or damaged is
computed again (and says so in the manifest), nothing damaged reaches an output video,
and a committed video whose output is gone or changed is encoded again from its
payloads. The outputs are byte-identical to the undisturbed run's."""

from __future__ import annotations

import shutil

import pytest

from raywarp.pipeline.manifest import Manifest
from raywarp.pipeline.records import ProgressRow
from raywarp.pipeline.run import run
from test_pipeline import small_config, write_video

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """A finished run of one video of clip, seam, clip; kept as a pristine copy."""
    src = tmp_path_factory.mktemp("src")
    write_video(src / "film.mp4", "coffee", 13, (16, 16), shift=(1.0, 0.0))
    dst = tmp_path_factory.mktemp("pristine") / "out"
    assert run(str(src), str(dst), small_config(tiny_model), quiet=True).ok
    return src, dst


@pytest.fixture
def copy(finished, tmp_path):
    """(src, a copy of the finished run's DST to damage, the undisturbed output's bytes)."""
    src, pristine = finished
    dst = tmp_path / "out"
    shutil.copytree(pristine, dst)
    return src, dst, (pristine / "film.mp4").read_bytes()


def units(manifest: Manifest, kind: str) -> list[dict]:
    return sorted((u for u in manifest.read_table("clips").to_pylist() if u["kind"] == kind), key=lambda u: u["start"])


def rows_of(manifest: Manifest, unit_id: str, attempt: int) -> list[dict]:
    return [r for r in manifest.progress().to_pylist() if r["id"] == unit_id and r["attempt"] == attempt]


def flip_a_bit(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def rerun(src, dst, tiny_model):
    summary = run(str(src), str(dst), small_config(tiny_model), quiet=True)
    assert summary.ok, summary.format()
    return summary


def test_a_deleted_output_video_is_encoded_again(copy, tiny_model):
    src, dst, original = copy
    (dst / "film.mp4").unlink()
    summary = rerun(src, dst, tiny_model)
    assert summary.units_computed == 0  # encoded from the payloads, nothing recomputed
    assert (dst / "film.mp4").read_bytes() == original
    manifest = Manifest(str(dst))
    video_id = manifest.read_table("videos").to_pylist()[0]["video_id"]
    rows = rows_of(manifest, video_id, 2)
    assert [r["status"] for r in rows] == ["failed", "done"] and "film.mp4 is missing" in rows[0]["error"]


def test_a_changed_output_video_is_encoded_again(copy, tiny_model):
    src, dst, original = copy
    (dst / "film.mp4").write_bytes(original[: len(original) // 2])
    rerun(src, dst, tiny_model)
    assert (dst / "film.mp4").read_bytes() == original


@pytest.mark.parametrize("damage", ["bit flip", "deleted"])
def test_a_damaged_payload_is_recomputed_and_never_reaches_the_output(copy, tiny_model, damage):
    """The output is gone too, so the encoder reads every payload: the damaged seam is
    found before a frame is written, recomputed to the same bytes, and the video encoded."""
    src, dst, original = copy
    manifest = Manifest(str(dst))
    seam = units(manifest, "seam")[0]
    payload = dst / "_raywarp" / "payload" / f"{seam['id']}.zip"
    before = payload.read_bytes()
    flip_a_bit(payload) if damage == "bit flip" else payload.unlink()
    (dst / "film.mp4").unlink()
    summary = rerun(src, dst, tiny_model)
    assert summary.units_computed == 1
    assert payload.read_bytes() == before and (dst / "film.mp4").read_bytes() == original
    rows = rows_of(manifest, seam["id"], 2)
    said = "do not match the checksum" if damage == "bit flip" else "missing"
    assert [r["status"] for r in rows] == ["failed", "done"] and said in rows[0]["error"], rows
    assert "recomputing" in rows[0]["error"]


def test_a_clip_redone_later_finds_its_seam_payload_gone_and_the_seam_is_recomputed(copy, tiny_model):
    """A clip left to do (here: marked failed in an earlier attempt) and its seam's
    payload deleted: the seam is recomputed before the clip uses it, not reported as
    'no committed result'."""
    src, dst, original = copy
    manifest = Manifest(str(dst))
    seam, clip = units(manifest, "seam")[0], units(manifest, "clip")[1]
    for unit_id in (clip["id"], clip["video_id"]):  # the clip failed in attempt 1, and so its video
        done = rows_of(manifest, unit_id, 1)[-1]
        manifest.append_progress([ProgressRow.from_row({**done, "status": "failed", "error": "killed",
                                                        "finished_at": done["finished_at"] + 1})])
    (dst / "_raywarp" / "payload" / f"{seam['id']}.zip").unlink()
    summary = rerun(src, dst, tiny_model)
    assert summary.units_computed == 2
    assert (dst / "film.mp4").read_bytes() == original
    assert "missing" in rows_of(manifest, seam["id"], 2)[0]["error"]
    assert [r["status"] for r in rows_of(manifest, clip["id"], 2)] == ["done"]
