"""Issue #15: scene stores on S3. A real S3-compatible server (moto's server mode on 127.0.0.1,
started here) and the real CLI, with credentials and endpoint the usual way (environment):
convert into S3, predict in place, evaluate, open in the napari reader; a convert killed
mid-write and run again finishes the store. Every store equals the one a local run writes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_store

pytest.importorskip("s3fs")
pytest.importorskip("moto")
pytestmark = pytest.mark.slow
TIMEOUT_S = 300
BUCKET = "scenes"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on the loopback address and the environment that points boto at it."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    yield env
    server.terminate()
    server.wait(10)
    log.close()


def cli(env: dict, cwd: Path, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "elegantviz", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    if check:
        assert done.returncode == 0, f"{args[:2]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def download(env: dict, url: str, to: Path) -> Path:
    """The S3 store's objects as a local folder, to be compared file by file."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing")
    fs.invalidate_cache()
    fs.get(url.removeprefix("s3://"), str(to), recursive=True)
    return to


@pytest.fixture(scope="module")
def raster(tmp_path_factory, s3_env) -> Path:
    folder = tmp_path_factory.mktemp("raster")
    cli(s3_env, folder, "synth", "scene.tif", "--size", 384, "--seed", 7, "-q")
    return folder / "scene.tif"


def mask(raster: Path) -> list:
    return ["--mask", raster.with_name("scene_mask.tif")]


@pytest.fixture(scope="module")
def checkpoint() -> str:
    from elegantviz.weights import shipped_checkpoint

    return str(shipped_checkpoint())


def test_convert_predict_evaluate_on_s3_equal_the_local_run(s3_env, raster, checkpoint, tmp_path):
    url = f"s3://{BUCKET}/one/scene.zarr"
    local = tmp_path / "local.zarr"
    for out in (url, local):
        cli(s3_env, tmp_path, "convert", raster, out, *mask(raster), "--classes", "riverworld", "--chunk", 128, "-q")
        cli(s3_env, tmp_path, "predict", checkpoint, out, "-q")
    assert_same_store(download(s3_env, url, tmp_path / "from-s3.zarr"), local)
    ev_s3 = cli(s3_env, tmp_path, "evaluate", url, "--pair", "river:pond", "--out", "ev-s3", "-q")
    ev_local = cli(s3_env, tmp_path, "evaluate", local, "--pair", "river:pond", "--out", "ev-local", "-q")
    # a local store gets its regions file beside it; a store behind a URL keeps them in
    # labels/error's metadata (the navigator reads either), compared with the store below
    local_text = ev_local.stdout.replace(str(local), "X").split("  regions: ")[0].rstrip() + "\n"
    assert "mIoU" in ev_s3.stdout and ev_s3.stdout.replace(url, "X").replace("ev-s3", "ev") == \
        local_text.replace("ev-local", "ev")
    # the error map and its regions went into the S3 store as into the local one
    assert_same_store(download(s3_env, url, tmp_path / "from-s3-evaluated.zarr"), local)


def test_the_napari_reader_opens_a_store_on_s3(s3_env, raster, tmp_path, monkeypatch, qtbot):
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(k, s3_env[k])
    url = f"s3://{BUCKET}/reader/scene.zarr"
    cli(s3_env, tmp_path, "convert", raster, url, *mask(raster), "--classes", "riverworld", "--chunk", 128, "-q")
    cli(s3_env, tmp_path, "convert", raster, tmp_path / "local.zarr", *mask(raster), "--classes", "riverworld", "--chunk", 128, "-q")
    from napari_elegantviz.reader import get_reader

    reader = get_reader(url)
    assert callable(reader), "the reader declined a scene store on S3"
    got = {kw["name"]: data for data, kw, _ in reader(url)}
    want = {kw["name"]: data for data, kw, _ in get_reader(str(tmp_path / "local.zarr"))(str(tmp_path / "local.zarr"))}
    assert set(got) == set(want) == {"image", "gt"}
    for name in got:
        assert len(got[name]) == len(want[name]) > 1  # the pyramid, read lazily from S3
        np.testing.assert_array_equal(np.asarray(got[name][-1]), np.asarray(want[name][-1]))
        np.testing.assert_array_equal(np.asarray(got[name][0][100:228, 50:178]),
                                      np.asarray(want[name][0][100:228, 50:178]))
    # `elegantviz view s3://...`: a real viewer with the docks draws what it draws from disk
    from napari_elegantviz.view import open_viewer

    shots = []
    for where in (url, str(tmp_path / "local.zarr")):
        viewer = open_viewer(where, show=True)
        try:
            assert [layer.name for layer in viewer.layers] == ["image", "gt"]
            viewer.layers["gt"].visible = False
            viewer.reset_view()
            qtbot.wait(200)
            shots.append(viewer.screenshot(canvas_only=True, flash=False)[..., :3])
        finally:
            viewer.close()
    assert shots[0].std() > 10, "the canvas shows no image"
    np.testing.assert_array_equal(shots[0], shots[1])


def _progress_keys(env: dict, url: str) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing",
                           use_listings_cache=False)
    try:
        return len(fs.find(url.removeprefix("s3://") + "/_progress"))
    except FileNotFoundError:
        return 0


def test_a_convert_killed_mid_write_on_s3_resumes(s3_env, raster, tmp_path):
    url = f"s3://{BUCKET}/killed/scene.zarr"
    cmd = [sys.executable, "-m", "elegantviz", "convert", raster, url, *mask(raster), "--classes", "riverworld", "--chunk", 32, "-q"]
    with open(tmp_path / "kill.log", "w") as log:
        proc = subprocess.Popen(list(map(str, cmd)), cwd=tmp_path, env=s3_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline and _progress_keys(s3_env, url) < 3:
        time.sleep(0.02)
    assert proc.poll() is None, f"convert finished before it could be killed: {(tmp_path / 'kill.log').read_text()}"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert _progress_keys(s3_env, url) >= 3  # finished blocks recorded on S3
    refused = cli(s3_env, tmp_path, "evaluate", url, "-q", check=False)
    assert refused.returncode != 0 and "incomplete" in (refused.stdout + refused.stderr).lower()
    again = cli(s3_env, tmp_path, "convert", raster, url, *mask(raster), "--classes", "riverworld", "--chunk", 32, "-q")
    assert again.returncode == 0
    cli(s3_env, tmp_path, "convert", raster, tmp_path / "local.zarr", *mask(raster), "--classes", "riverworld", "--chunk", 32, "-q")
    assert_same_store(download(s3_env, url, tmp_path / "from-s3.zarr"), tmp_path / "local.zarr")
