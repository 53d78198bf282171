"""`raywarp run` refuses what it cannot do before Ray starts and before DST is touched."""

from __future__ import annotations

import pytest
import ray

from raywarp.cli import main as cli_main


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for a command that must be refused")

    monkeypatch.setattr(ray, "init", refuse)


def test_a_missing_source_is_refused_before_ray_starts_or_dst_is_written(tmp_path, capsys, no_ray):
    dst = tmp_path / "out"
    assert cli_main(["run", str(tmp_path / "no-such-dir"), "--out", str(dst)]) == 2
    assert "no-such-dir: no such file, directory or prefix" in capsys.readouterr().err
    assert not dst.exists()


BAD_RUNS = {  # options → what the message must name
    "hub model id": (["--model", "some-org/some-model"], "never downloads"),
    "no overlap": (["--overlap", "0"], "overlap"),
    "clip shorter than its seams": (["--clip-len", "4", "--overlap", "2"], "clip_len"),
    "inpainting without a mask": (["--task", "inpaint"], "needs --mask"),
    "unparsable mask": (["--task", "inpaint", "--mask", "square:1,2"], "cannot parse 'square:1,2'"),
    "missing mask file": (["--task", "inpaint", "--mask", "file:/no/such/mask.png"], "not a readable image file"),
    "actors": (["--min-actors", "3", "--max-actors", "2"], "min_actors"),
}


@pytest.mark.parametrize("case", BAD_RUNS)
def test_a_bad_model_or_bad_options_are_refused_before_anything_is_written(case, tmp_path, capsys, no_ray):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mp4").write_bytes(b"not read: the command is refused first")
    dst = tmp_path / "out"
    options, named = BAD_RUNS[case]
    assert cli_main(["run", str(tmp_path / "src"), "--out", str(dst), *options]) == 2
    assert named in capsys.readouterr().err
    assert not dst.exists()
