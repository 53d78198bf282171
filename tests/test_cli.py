"""`raywarp run` refuses what it cannot do before Ray starts and before DST is touched."""

from __future__ import annotations

import ray

from raywarp.cli import main as cli_main


def test_a_missing_source_is_refused_before_ray_starts_or_dst_is_written(tmp_path, capsys):
    dst = tmp_path / "out"
    assert cli_main(["run", str(tmp_path / "no-such-dir"), "--out", str(dst)]) == 2
    assert "no-such-dir: no such file, directory or prefix" in capsys.readouterr().err
    assert not dst.exists() and not ray.is_initialized()


def test_a_bad_model_or_bad_options_are_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mp4").write_bytes(b"not read: the command is refused first")
    dst = tmp_path / "out"
    assert cli_main(["run", str(tmp_path / "src"), "--out", str(dst), "--model", "some-org/some-model"]) == 2
    assert "never downloads" in capsys.readouterr().err
    assert cli_main(["run", str(tmp_path / "src"), "--out", str(dst), "--overlap", "0"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert not dst.exists() and not ray.is_initialized()
