"""Shared fixtures: a real S3 server (moto's, on 127.0.0.1) that Ray workers and s3fs reach,
and a tiny random diffusers model folder for fast pipeline runs."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

# Ray workers take S3 credentials from their environment (raywarp never passes them as
# task arguments); the moto server takes any. Set before any test starts Ray.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: tiny models are overhead-bound, and extra
    intra-op threads only add synchronisation, seconds per pass on a busy 2-core CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Storage options for fsspec/s3fs pointing at a moto server, for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-west-2"}}
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh empty bucket: (bucket name, storage options)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    name = f"raywarp-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name, create_parents=True, region_name="us-west-2")
    return name, s3_server


@pytest.fixture(params=["local", "s3"])
def dst(request, tmp_path):
    """(DST, storage_options) for a fresh output location, local and on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "out"), None
    bucket, options = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out", options


@pytest.fixture(scope="session")
def ray_session():
    """Shuts down at the end of the session whatever Ray `local_ray` left running."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(ray_session):
    """A local Ray for a module's pipeline runs, set up as an embedded run sets up its own.

    One serves the session where modules allow: it is started if none is running and left
    running for the next module. A module that needs a Ray of its own (a cluster, metrics
    on a port) shuts it down first (`own_ray`)."""
    import ray

    from raywarp.pipeline.config import RunConfig
    from raywarp.pipeline.run import local_system_config

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _system_config=local_system_config(RunConfig(max_actors=1)))
    yield


def own_ray() -> None:
    """Shut down the session's Ray (`local_ray`), for a module that starts its own."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A local folder holding a tiny random conditional pixel UNet and a DDIM scheduler."""
    from diffusers import DDIMScheduler

    from raywarp.models import tiny_pixel_unet

    root = tmp_path_factory.mktemp("tiny_model")
    tiny_pixel_unet(conditional=True).save_pretrained(root)
    DDIMScheduler(prediction_type="sample").save_pretrained(root)
    return str(root)
