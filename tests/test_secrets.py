"""S3 credentials stay out of everything a run leaves readable: the command line (there
is no flag for them), the manifest, Ray's task arguments and logs, the output. And
output names derived from source names never leave DST."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import s3fs

from raywarp.cli import main as cli_main
from raywarp.pipeline.run import output_uris, split_credentials
from test_pipeline import ROOT, write_video


def test_credentials_are_taken_out_of_what_tasks_get():
    options, env = split_credentials({"key": "K", "secret": "S", "token": "T", "client_kwargs": {"endpoint_url": "E"}})
    assert options == {"client_kwargs": {"endpoint_url": "E"}}
    assert env == {"AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S", "AWS_SESSION_TOKEN": "T"}


def test_there_is_no_flag_for_a_secret(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        cli_main(["run", str(tmp_path), "--out", str(tmp_path / "out"), "--s3-secret", "hunter2"])
    assert refused.value.code == 2 and "unrecognized arguments: --s3-secret" in capsys.readouterr().err


def files_under(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


@pytest.mark.slow
def test_a_run_on_s3_leaves_its_credentials_nowhere(s3_bucket, tiny_model, tmp_path):
    bucket, options = s3_bucket
    endpoint = options["client_kwargs"]["endpoint_url"]
    key, secret = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"secret-{uuid.uuid4().hex}"
    fs = s3fs.S3FileSystem(key=key, secret=secret, client_kwargs=options["client_kwargs"])  # moto takes any
    fs.put(str(write_video(tmp_path / "clip.mp4", "chelsea", 9, (16, 16), shift=(1.0, 1.0))), f"{bucket}/in/clip.mp4")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    done = subprocess.run([sys.executable, "-m", "raywarp.cli", "run", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out",
                           "--s3-endpoint", endpoint, "--task", "sr", "--model", tiny_model, "--mode", "warped",
                           "--clip-len", "7", "--overlap", "2", "--steps", "2", "--max-actors", "1", "--verbose"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert fs.exists(f"{bucket}/out/clip.mp4")
    session = Path(done.stdout.strip().splitlines()[-1].removeprefix("Ray's logs: ")).parent
    assert session.is_dir() and any(files_under(session / "logs")), done.stdout
    readable = {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()}
    readable.update({f"s3://{p}": fs.cat_file(p) for p in fs.find(f"{bucket}/out")})
    readable.update({str(p): p.read_bytes() for p in files_under(session)})
    assert len(readable) > 20
    for name, data in readable.items():
        assert secret.encode() not in data and key.encode() not in data, f"a credential in {name}"


ADVERSARIAL = [
    ["/archive/a/clip.mp4", "/archive/../etc/passwd.mp4", "/archive/b/../../../root.mp4"],
    ["s3://bucket/a/../../escape.mp4", "s3://bucket//x.mp4", "s3://bucket/a/b.mp4"],
    ["/archive/_raywarp/progress.mp4", "/archive/x.mp4"],  # not into the manifest folder
    ["/archive/new\\nline.mp4", "/archive/tab\\t.mp4", "/archive/back\\\\..\\\\..\\\\slash.mp4", "/archive/ünï cødé.mp4"],
    ["/archive/a/clip.mp4", "/archive/a/clip.mkv", "file:///archive/a/clip.mp4", "/archive/a/clip-1.mp4"],
    ["/x.mp4"],
    ["/.mp4", "/archive/.hidden.mp4", "/archive/..mp4"],
]


@pytest.mark.parametrize("uris", ADVERSARIAL)
@pytest.mark.parametrize("dst", ["/restored", "s3://bucket/restored"])
def test_output_names_stay_inside_dst(uris, dst):
    uris = [u.encode().decode("unicode_escape") if "\\" in u else u for u in uris]
    outputs = output_uris(dst, uris)
    assert len(set(outputs.values())) == len(uris)  # unique
    for uri, out in outputs.items():
        rel = out[len(dst) + 1 :]
        parts = rel.split("/")
        assert out.startswith(dst + "/") and rel.endswith(".mp4"), (uri, out)
        assert ".." not in parts and "" not in parts and "." not in parts and parts[0] != "_raywarp", (uri, out)
        assert not any(ord(c) < 32 for c in rel) and "\\" not in rel, (uri, out)
    assert output_uris(dst, list(reversed(uris))) == outputs  # not the listing order
