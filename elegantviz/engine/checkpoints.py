"""Checkpoints: writing them atomically, checking them for NaN, reading one back as a
:class:`TrainedModel`, and exporting a small predict-only copy.

A checkpoint written by `elegantviz train` is a dict: ``model`` (state dict), ``config``,
``classes``, ``norm``, ``in_chans``, ``bands`` and, for resuming, the optimizer, scheduler,
sampler and random states. ``load_model`` attaches the metadata to the network, as mmseg's
``init_model`` does, so a caller never unpacks a tuple.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from elegantviz.classes import ClassTable
from elegantviz.config import TrainConfig, config_from_dict
from elegantviz.data.datasets import Normalization
from elegantviz.errors import InputError
from elegantviz.models.registry import build_model


@dataclass
class TrainedModel:
    """A network in eval mode with what prediction needs to use it on a scene."""

    model: torch.nn.Module
    classes: ClassTable
    norm: Normalization
    config: TrainConfig
    bands: list[str]
    in_chans: int
    path: Path
    meta: dict = field(default_factory=dict)  # iteration, best_miou, skipped, log (what the file holds besides)

    @property
    def output_stride(self) -> int:
        return int(getattr(self.model, "output_stride", 1))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but CUDA is not available here")
    return dev


def nonfinite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating tensors in a (nested) state that hold NaN or inf."""
    bad = []
    for k, v in state.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            bad += nonfinite_tensors(v, name + ".")
        elif isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(name)
    return bad


class NonFiniteError(InputError):
    """Training stopped: too many steps in a row with a non-finite loss or gradients."""


def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The network of a checkpoint written by `train` or `export`, on ``device``, in eval mode."""
    path = Path(ckpt_path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"{path}: not a readable elegantviz checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise InputError(f"{path}: not an elegantviz checkpoint (no model/config entries)")
    cfg = config_from_dict(ck["config"], f"{path} config")
    table = ClassTable.from_dict(ck["classes"])
    model = build_model(cfg.model.name, table.num_classes, ck["in_chans"], **cfg.model.overrides)
    model.load_state_dict(ck["model"])  # float16 weights (export_model) are cast to the model's dtype
    model.to(device).eval()
    meta = {k: ck[k] for k in ("iteration", "best_miou", "skipped", "log") if k in ck}
    bands = list(ck.get("bands") or [f"band {i + 1}" for i in range(ck["in_chans"])])
    return TrainedModel(model, table, Normalization(**ck["norm"]), cfg, bands, int(ck["in_chans"]), path, meta)


def export_model(checkpoint: str | Path, out: str | Path, half: bool = True) -> Path:
    """A checkpoint for predicting only: weights (float16 with ``half``: half the size, and
    float16 keeps what argmax needs), config, class table, normalisation and bands, plus the run's
    ``log.jsonl`` when it sits beside the checkpoint. No optimizer, no random states: it can
    predict and be fine-tuned from, not resumed. ``load_model`` reads it as any checkpoint."""
    src = Path(checkpoint)
    ck = torch.load(src, map_location="cpu", weights_only=False)
    model = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ck["model"].items()}
    bad = nonfinite_tensors({"model": model})
    if bad:
        raise NonFiniteError(f"{src}: non-finite weights after export ({', '.join(bad[:3])})")
    log = src.with_name("log.jsonl")
    keep = ("config", "classes", "norm", "in_chans", "bands", "iteration", "best_miou", "skipped")
    exported = {"model": model, **{k: ck[k] for k in keep if k in ck},
                "log": log.read_text().splitlines() if log.is_file() else []}
    dst = Path(out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(exported, dst)
    return dst
