"""Issue #15: many scenes on dask.distributed give the stores a serial run gives, byte for byte;
a worker killed mid-scene leaves that scene to a rerun, which does only what is missing; a bad
scene is named at the end and stops nothing; evaluate reduces the scenes' confusion matrices.

The cluster is a real ``distributed.LocalCluster`` (2 worker processes, one thread each) that
the tests start; the commands run as the real CLI in a child process, pointed at it with
``--scheduler``. The kill is found by watching the stores and the scheduler from outside.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_store

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SCENES = 4
SIZE = 320
TIMEOUT_S = 300.0


def cli(*args: object, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "elegantviz", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    if check:
        assert done.returncode == 0, f"{args[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def cluster():
    """Two one-thread worker processes; a task whose worker dies is not retried elsewhere (the
    scheduler's allowed-failures is 0), so the test sees the failed scene and its rerun, and a
    worker holds only the task it runs (saturation 1.0), so the kill fails that one scene."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          env={"OMP_NUM_THREADS": "1"}) as c, Client(c) as client:
            yield c.scheduler_address, client


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rasters")
    for i in range(SCENES):
        cli("synth", f"s{i}.tif", "--size", SIZE, "--seed", 40 + i, "-q", cwd=folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint() -> str:
    from elegantviz.weights import shipped_checkpoint

    return str(shipped_checkpoint())


@pytest.fixture(scope="module")
def serial(rasters, checkpoint, tmp_path_factory) -> Path:
    """The reference: the same three commands, serially in one process (the stores as convert
    and predict left them are kept in ``converted`` and ``predicted``)."""
    cwd = tmp_path_factory.mktemp("serial")
    cli("convert", rasters, "stores", "--classes", "riverworld", "-q", cwd=cwd)
    shutil.copytree(cwd / "stores", cwd / "converted")
    cli("predict", checkpoint, *sorted((cwd / "stores").glob("*.zarr")), "-q", cwd=cwd)
    shutil.copytree(cwd / "stores", cwd / "predicted")
    cli("evaluate", *sorted((cwd / "stores").glob("*.zarr")), "--pair", "river:pond", "--out", "ev", "-q", cwd=cwd)
    return cwd


@pytest.fixture(scope="module")
def on_cluster(rasters, checkpoint, cluster, tmp_path_factory) -> tuple[Path, list[subprocess.CompletedProcess]]:
    address, _ = cluster
    cwd = tmp_path_factory.mktemp("cluster")
    runs = [cli("convert", rasters, "stores", "--classes", "riverworld", "-q", "--scheduler", address, cwd=cwd)]
    runs.append(cli("predict", checkpoint, *sorted((cwd / "stores").glob("*.zarr")), "-q", "--scheduler", address,
                    cwd=cwd))
    runs.append(cli("evaluate", *sorted((cwd / "stores").glob("*.zarr")), "--pair", "river:pond", "--out", "ev", "-q",
                    "--scheduler", address, cwd=cwd))
    return cwd, runs


def test_cluster_stores_equal_the_serial_run_byte_for_byte(serial, on_cluster):
    cwd, runs = on_cluster
    assert "convert: 4 done, 0 already done" in runs[0].stdout
    assert "predict: 4 done, 0 already done" in runs[1].stdout
    for i in range(SCENES):
        assert_same_store(cwd / "stores" / f"s{i}.zarr", serial / "stores" / f"s{i}.zarr")


def test_one_task_per_scene_spread_over_both_workers(on_cluster, cluster):
    _, client = cluster
    ran = client.run(lambda dask_worker: sorted({str(e[0]) for e in dask_worker.state.log
                                                 if str(e[0]).startswith("elegantviz-predict-")}))
    assert len(ran) == 2 and all(ran.values()), ran
    assert sorted(k.split("-")[2] for keys in ran.values() for k in keys) == [str(i) for i in range(SCENES)]


def test_dataset_report_sums_the_scenes_confusion(on_cluster, serial):
    """The dataset report against a dense confusion matrix of all four scenes' gt and pred."""
    import zarr

    cwd, _ = on_cluster
    report = json.loads((cwd / "ev" / "report.json").read_text())
    serial_report = json.loads((serial / "ev" / "report.json").read_text())
    # a worker is given each local path whole; the serial run keeps the relative one it was given
    assert [Path(r["scene"]) for r in report["per_scene"]] == [cwd / "stores" / f"s{i}.zarr" for i in range(SCENES)]
    for r in (report, serial_report):
        for row in r["per_scene"]:
            row["scene"] = Path(row["scene"]).name
    assert report == serial_report
    k = len(report["class_names"])
    cm = np.zeros((k, k), np.int64)
    for i in range(SCENES):
        root = zarr.open_group(str(cwd / "stores" / f"s{i}.zarr"), mode="r")
        g, p = (np.asarray(root[f"labels/{n}/0"][...]).ravel().astype(np.int64) for n in ("gt", "pred"))
        keep = (g < k) & (p < k)
        cm += np.bincount(g[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    assert np.array_equal(np.asarray(report["confusion_matrix"]), cm)
    river, pond = report["class_names"].index("river"), report["class_names"].index("pond")
    assert report["pairs"][0]["pixels"] == cm[river, pond]
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert report["per_class"]["river"]["iou"] == pytest.approx(iou[river])
    for i in range(SCENES):
        assert (cwd / "ev" / f"s{i}" / "report.json").is_file()


def _worker_running(client, index: int) -> str | None:
    """The address of the worker running predict's task for scene ``index``, if one is."""
    for worker, keys in client.processing().items():
        if any(str(k).startswith(f"elegantviz-predict-{index}-") for k in keys):
            return worker
    return None


def test_worker_killed_mid_scene_then_rerun_finishes_only_that_scene(serial, checkpoint, cluster, tmp_path):
    address, client = cluster
    shutil.copytree(serial / "converted", tmp_path / "stores")
    stores = sorted((tmp_path / "stores").glob("*.zarr"))
    victim = stores[2]
    out, err = tmp_path / "kill.out", tmp_path / "kill.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "elegantviz", "predict", checkpoint, *stores, "-q",
                                 "--scheduler", address], cwd=tmp_path, env=ENV, stdout=o, stderr=e)
    pids = client.run(os.getpid)
    deadline, killed = time.monotonic() + TIMEOUT_S, None
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        worker = _worker_running(client, 2)
        if worker is not None and (victim / "_predict").exists():  # mid-scene: its forward pass has begun
            os.kill(pids[worker], signal.SIGKILL)
            killed = worker
        time.sleep(0.005)
    assert killed is not None, f"scene 2 was never seen mid-run: {err.read_text()[-1500:]}"
    assert proc.wait(TIMEOUT_S) == 2, out.read_text() + err.read_text()
    text = out.read_text() + err.read_text()
    assert "predict: 3 done, 0 already done (skipped), 1 failed" in text, text
    assert f"{victim}: KilledWorker" in text, text
    assert not (victim / "labels" / "pred").exists() or (victim / "_predict").exists(), "the victim looks finished"
    for s in stores:
        if s != victim:
            assert_same_store(s, serial / "predicted" / s.name)
    client.wait_for_workers(2, timeout=120)  # the nanny restarts the dead worker
    again = cli("predict", checkpoint, *stores, "-q", "--scheduler", address, cwd=tmp_path)
    assert "predict: 1 done, 3 already done (skipped), 0 failed" in again.stdout, again.stdout
    for s in stores:
        assert_same_store(s, serial / "predicted" / s.name)


def test_a_bad_scene_is_named_at_the_end_and_stops_nothing(serial, checkpoint, tmp_path):
    """A 3-band scene among 4-band ones, on a local cluster that the command starts itself."""
    from conftest import write_geotiff

    rng = np.random.default_rng(0)
    write_geotiff(tmp_path / "rgb.tif", rng.integers(0, 255, (3, 96, 96), dtype=np.uint8))
    cli("convert", tmp_path / "rgb.tif", tmp_path / "rgb.zarr", "-q", cwd=tmp_path)
    stores = []
    for i in (0, 1):
        shutil.copytree(serial / "converted" / f"s{i}.zarr", tmp_path / f"s{i}.zarr")
        stores.append(tmp_path / f"s{i}.zarr")
    done = cli("predict", checkpoint, stores[0], tmp_path / "rgb.zarr", stores[1], "-q", "--workers", 2,
               cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "predict: 2 done, 0 already done (skipped), 1 failed" in done.stdout
    assert f"{tmp_path / 'rgb.zarr'}: " in done.stderr and "has 3 bands, the model was trained on 4" in done.stderr
    for s in stores:
        assert_same_store(s, serial / "predicted" / s.name)


def test_one_store_twice_is_refused_before_any_work(serial, checkpoint, tmp_path):
    """Two tasks would write one store at once: a stem twice in a folder, a scene twice in a list."""
    folder = tmp_path / "rasters"
    folder.mkdir()
    cli("synth", folder / "a.tif", "--size", 64, "-q", cwd=tmp_path)
    shutil.copy(folder / "a.tif", folder / "a.tiff")
    done = cli("convert", folder, tmp_path / "stores", "--workers", 1, cwd=tmp_path, check=False)
    assert done.returncode == 2 and "a.tiff: has the stem of a.tif; both would become a.zarr" in done.stderr, done.stderr
    assert not (tmp_path / "stores").exists() or not any((tmp_path / "stores").iterdir())
    store = serial / "converted" / "s0.zarr"
    done = cli("predict", checkpoint, store, store, "--workers", 1, cwd=tmp_path, check=False)
    assert done.returncode == 2 and f"{store}: given twice" in done.stderr, done.stderr


def test_scenes_in_flight_are_what_the_workers_can_run():
    """A worker of 8 threads and 1 GPU runs one GPU task at a time: only so many scenes go out."""
    from elegantviz.engine.collection import _slots

    class Cluster:
        def scheduler_info(self, n_workers=5):
            return {"workers": {"a": {"nthreads": 8, "resources": {"GPU": 1}}, "b": {"nthreads": 8, "resources": {}},
                                "c": {"nthreads": 2, "resources": {"GPU": 4}}}}

    assert _slots(Cluster(), None) == 18
    assert _slots(Cluster(), {"GPU": 1}) == 1 + 0 + 2
    assert _slots(Cluster(), {"GPU": 2}) == 0 + 0 + 2
    assert _slots(Cluster(), {"TPU": 1}) == 1  # none fits yet: one goes out and waits for such a worker
