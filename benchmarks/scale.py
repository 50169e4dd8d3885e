"""Scale-out figures (issue #15): many scenes on a local dask cluster, and stores on S3.

1. ``--scenes`` riverworld scenes predicted with the shipped model: serially in this process
   (torch with every core), then on a ``LocalCluster`` of 2 workers x 1 thread (the cluster's
   start-up timed apart). On 2 cores about 2x is the ceiling.
2. Reading a store's full-resolution image from a local S3 server (moto's server mode on
   127.0.0.1, started here) against reading it from the local disk: MB/s of decoded pixels.
   moto is a Python server, so this is the client path's cost, not AWS's throughput.

Run it alone (it uses both cores):  python benchmarks/scale.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _report import report

HERE = Path(__file__).resolve().parent


def _scenes(work: Path, n: int, size: int) -> list[Path]:
    from elegantviz.data.synthetic import synthesize_riverworld

    return [Path(synthesize_riverworld(work / "scenes" / f"s{i}.zarr", height=size, seed=100 + i, overwrite=True,
                                       progress=False).url) for i in range(n)]


def _fresh(scenes: list[Path], to: Path) -> list[str]:
    shutil.rmtree(to, ignore_errors=True)
    to.mkdir(parents=True)
    return [str(shutil.copytree(s, to / s.name)) for s in scenes]


def _predict_all(scenes: list[str], checkpoint: str, client) -> float:
    from elegantviz.engine.collection import predict_task, run_scenes

    options = {"mode": "holistic", "device": "cpu"}
    started = time.perf_counter()
    outcomes = run_scenes(predict_task, scenes, (checkpoint, options), client=client, progress=False, what="predict")
    failed = [o for o in outcomes if o.error]
    if failed:
        raise SystemExit(f"{len(failed)} scenes failed: {failed[0].scene}: {failed[0].error}")
    return time.perf_counter() - started


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("moto_server did not start")


def _read_mb_s(url: str, repeats: int) -> float:
    from elegantviz.io.store import open_scene

    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        image = open_scene(url).image(0).compute()
        best = min(best, time.perf_counter() - started)
    return image.nbytes / best / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--size", type=int, default=768, help="scene side (px)")
    ap.add_argument("--read-size", type=int, default=2048, help="side of the scene read from S3 and disk (px)")
    ap.add_argument("--work", default=str(HERE / "scratch" / "scale"))
    ap.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    args = ap.parse_args()

    import torch
    from distributed import Client, LocalCluster

    from elegantviz.weights import shipped_checkpoint

    work = Path(args.work)
    checkpoint = str(shipped_checkpoint())
    scenes = _scenes(work, args.scenes, args.size)
    result: dict = {"scenes": args.scenes, "size": args.size, "cores": os.cpu_count(),
                    "torch_threads_serial": torch.get_num_threads()}
    result["serial_s"] = _predict_all(_fresh(scenes, work / "serial"), checkpoint, None)
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"OMP_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
        result["cluster_start_s"] = time.perf_counter() - started
        result["cluster_2x1_s"] = _predict_all(_fresh(scenes, work / "cluster"), checkpoint, client)
    result["speedup"] = result["serial_s"] / result["cluster_2x1_s"]

    from elegantviz.data.synthetic import synthesize_riverworld

    local = synthesize_riverworld(work / "read.zarr", height=args.read_size, seed=5, overwrite=True, progress=False).url
    server, endpoint = _moto()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("bench")
        fs.put(local, "bench/read.zarr", recursive=True)
        result["read_size"] = args.read_size
        result["read_disk_mb_s"] = _read_mb_s(local, 3)
        result["read_s3_mb_s"] = _read_mb_s("s3://bench/read.zarr", 3)
        result["s3_vs_disk"] = result["read_s3_mb_s"] / result["read_disk_mb_s"]
    finally:
        server.terminate()
        server.wait(10)
    report(result, args.out)


if __name__ == "__main__":
    main()
