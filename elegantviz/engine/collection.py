"""Many scenes at once: one task per scene, in this process or on a dask.distributed cluster.

A collection (FBP's 150 scenes, DeepGlobe's 803 tiles) is work a field already runs on dask, so
`convert`, `predict` and `evaluate` take ``--scheduler ADDRESS`` (a running cluster: a Slurm
allocation through dask-jobqueue, a cloud deployment) or ``--workers N`` (a ``LocalCluster``
of N one-thread processes). Each scene is one task running the same function a serial run
calls, so the stores are the same byte for byte.

What a crash costs: a scene store is resumable at every stage (predict's cache, convert's
ledgers), so a worker that dies mid-scene leaves that scene to be finished, and a rerun of the
same command skips every scene already done for the same job (``store_done`` for convert,
``engine.predict.prediction_done`` for predict). A scene
that fails is reported by name with its one-line error at the end and does not stop the others.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from elegantviz.errors import ElegantvizError, InputError, writing

__all__ = ["Outcome", "run_scenes", "cluster_client", "predict_task", "convert_task", "evaluate_task",
           "CollectionFailed"]


@dataclass
class Outcome:
    """What became of one scene: a result, an error (one line), or skipped as already done."""

    scene: str
    result: dict | None = None
    error: str | None = None
    skipped: bool = False


class CollectionFailed(ElegantvizError):
    """Some scenes failed; the others are done. Their names and errors are in the message."""


@contextlib.contextmanager
def cluster_client(scheduler: str | None, workers: int | None) -> Iterator:
    """A dask.distributed Client on ``scheduler``, or on a LocalCluster of ``workers`` one-thread
    processes that lives as long as the block; None when neither is given (run here)."""
    if scheduler is None and workers is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise ElegantvizError(f"--scheduler and --workers need dask.distributed: pip install 'elegantviz[cluster]' "
                              f"({e})") from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise InputError(f"--scheduler {scheduler}: no dask scheduler answers there ({e})") from None
        with client:
            yield client
        return
    # one thread per worker: each task runs torch or a block loop of its own; two threads in one
    # worker would spin two OpenMP pools on the same cores
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def run_scenes(task: Callable[..., dict], scenes: list[str], args: tuple, *, client=None,
               done: Callable[[str], bool] | None = None, resources: dict | None = None,
               progress: bool = True, what: str = "scenes") -> list[Outcome]:
    """``task(scene, *args)`` for every scene not ``done``; on ``client`` one task per scene.

    Returns one Outcome per scene, in the order given. An error in one scene (bad input, a
    worker that died) is caught and kept, so the others run on."""
    from tqdm.auto import tqdm

    outcomes = {s: Outcome(s) for s in scenes}
    todo = []
    for s in scenes:
        if done is not None and done(s):
            outcomes[s].skipped = True
        else:
            todo.append(s)
    if client is not None and progress and getattr(client, "dashboard_link", None):
        print(f"dask dashboard: {client.dashboard_link}", flush=True)
    bar = tqdm(total=len(todo), desc=what, unit="scene", disable=not progress or not todo)
    if client is None:
        for s in todo:
            _settle(outcomes[s], lambda s=s: task(s, *args))
            bar.update()
    else:
        from distributed import as_completed

        # scenes go out no faster than the cluster runs them: a task handed to a worker waits in
        # that worker, so a worker that died would fail every scene it held, not only its own
        waiting, running = list(enumerate(todo)), as_completed()
        futures: dict = {}

        def submit() -> None:
            slots = _slots(client, resources) if waiting else 0  # one scheduler query per completion
            while waiting and len(futures) < slots:
                i, s = waiting.pop(0)
                future = client.submit(task, s, *args, key=f"elegantviz-{what}-{i}-{_token()}", pure=False,
                                       resources=resources)
                futures[future] = s
                running.add(future)

        submit()
        for future in running:
            _settle(outcomes[futures.pop(future)], future.result)
            bar.update()
            future.release()
            submit()
    bar.close()
    return [outcomes[s] for s in scenes]


def _slots(client, resources: dict | None) -> int:
    """How many tasks the cluster runs at once now (the threads of the workers that have the
    resources asked for); at least one, so a cluster still starting its workers gets work."""
    try:
        info = client.scheduler_info(n_workers=-1)  # some releases list only 5 workers by default
    except TypeError:  # releases before n_workers list them all
        info = client.scheduler_info()
    workers = info["workers"].values()
    slots = 0
    for w in workers:  # a worker of 8 threads and 1 GPU runs one GPU task at a time
        have = w.get("resources", {})
        slots += min([int(w.get("nthreads", 1))] + [int(have.get(r, 0) // n) for r, n in (resources or {}).items()])
    return max(1, slots)


def _token() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def _settle(outcome: Outcome, get: Callable[[], dict]) -> None:
    try:
        outcome.result = get()
    except (ElegantvizError, OSError) as e:
        outcome.error = str(e).splitlines()[0] if str(e) else type(e).__name__
    except Exception as e:  # a worker that died (KilledWorker), or a bug: named, and the others go on
        outcome.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def report(outcomes: list[Outcome], what: str, retry: str = "rerun the same command to finish them; "
                                                            "finished scenes are skipped") -> None:
    """Print the counts, then raise CollectionFailed naming every failed scene with its error."""
    failed = [o for o in outcomes if o.error is not None]
    skipped = sum(o.skipped for o in outcomes)
    ran = len(outcomes) - skipped - len(failed)
    print(f"{what}: {ran} done, {skipped} already done (skipped), {len(failed)} failed")
    if failed:
        lines = "\n".join(f"  {o.error if o.error.startswith(o.scene) else f'{o.scene}: {o.error}'}" for o in failed)
        raise CollectionFailed(f"{len(failed)} of {len(outcomes)} scenes failed ({retry}):\n{lines}")


# --- the tasks: top-level functions, so a worker process can unpickle them -------------------
@contextlib.contextmanager
def _on_this_worker(scene: str) -> Iterator[None]:
    """A task's own dask arrays are computed in the worker's process, as a serial run computes
    them: on a worker, dask's default scheduler is the cluster, which would scatter one scene's
    chunks over other workers (one dead worker would then fail scenes it never ran)."""
    import dask

    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):  # not on a worker: the caller's own scheduler stays
        on_worker = False
    else:
        on_worker = True
    if on_worker:  # for the worker's life, not per task: two tasks of one worker would race to restore it
        dask.config.set(scheduler="threads")
    with writing(scene):
        yield


_MODELS: dict = {}  # per worker process: the model of each (checkpoint, mtime, device), loaded once


def _trained(checkpoint: str, device: str):
    from elegantviz.engine.checkpoints import load_model, pick_device

    dev = pick_device(device)
    key = (str(Path(checkpoint).resolve()), Path(checkpoint).stat().st_mtime, str(dev))
    if key not in _MODELS:
        _MODELS.clear()  # one model per worker: a new checkpoint replaces the old one
        _MODELS[key] = load_model(checkpoint, dev)
    return _MODELS[key]


def predict_task(scene: str, checkpoint: str, options: dict) -> dict:
    """Predict one scene with the worker's copy of the model (loaded at its first scene)."""
    from elegantviz.engine.predict import predict_scene

    with _on_this_worker(scene):
        return predict_scene(checkpoint, scene, progress=False, trained=_trained(checkpoint, options["device"]),
                             **options)


def convert_task(source: str, out_dir: str, options: dict) -> dict:
    """Convert one raster (with its ``<stem>_mask`` file, when there is one) into
    ``out_dir/<stem>.zarr``."""
    from elegantviz.io.convert import convert_raster

    mask, out = mask_of(Path(source)), store_for(source, out_dir)
    with _on_this_worker(source):
        result = convert_raster([source], out, mask=mask, progress=False, **options)
    return {"scene": str(out), "shape": list(result.scene.shape), "mask": str(mask) if mask else None}


def evaluate_task(scene: str, options: dict) -> dict:
    from elegantviz.engine.evaluate import evaluate_scene

    with _on_this_worker(scene):
        return evaluate_scene(scene, progress=False, **options)


# --- folders of rasters -----------------------------------------------------------------------
RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt")
MASK_STEM = "_mask"  # synth writes OUT.tif and OUT_mask.tif; convert a folder pairs them the same way


def store_for(source: str | Path, out_dir: str) -> str:
    """Where ``convert RASTERS/ STORES/`` puts a raster: STORES/<stem>.zarr (a folder or a URL)."""
    return f"{str(out_dir).rstrip('/')}/{Path(source).stem}.zarr"


def store_done(url: str) -> bool:
    """A finished scene store is there (a half-written one is resumed, not skipped)."""
    from elegantviz.io.store import open_scene

    try:
        open_scene(url)
    except (ElegantvizError, OSError):
        return False
    return True


def mask_of(source: Path) -> Path | None:
    for suffix in dict.fromkeys((source.suffix, *RASTER_SUFFIXES)):
        candidate = source.with_name(source.stem + MASK_STEM + suffix)
        if candidate.is_file():
            return candidate
    return None


def folder_rasters(folder: Path) -> list[Path]:
    """The images of a folder (not their masks), sorted; a folder without any is refused, and so
    are two images of one stem (a.tif and a.png would both become a.zarr)."""
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
                    and not p.stem.endswith(MASK_STEM))
    if not images:
        raise InputError(f"{folder}: no rasters ({', '.join(RASTER_SUFFIXES)}) to convert")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise InputError(f"{p}: has the stem of {stems[p.stem].name}; both would become {p.stem}.zarr")
        stems[p.stem] = p
    return images
