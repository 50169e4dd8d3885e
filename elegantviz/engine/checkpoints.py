"""Checkpoints: writing them atomically, checking them for NaN, reading one back as a
:class:`TrainedModel`, and exporting a small predict-only copy.

A checkpoint written by `elegantviz train` is a dict: ``model`` (state dict), ``config``,
``classes``, ``norm``, ``in_chans``, ``bands`` and, for resuming, the optimizer, scheduler,
sampler and random states. ``load_model`` attaches the metadata to the network, as mmseg's
``init_model`` does, so a caller never unpacks a tuple.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from elegantviz.classes import ClassTable
from elegantviz.config import TrainConfig, config_from_dict
from elegantviz.data.datasets import Normalization
from elegantviz.errors import InputError
from elegantviz.models.registry import PRESETS, build_model
from elegantviz.models.state import state_mismatch


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


WEIGHT_FILES = ("pretrained_file", "stdc_weights")  # model overrides naming files of starting weights


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {name!r}: not a device (auto, cpu, cuda, cuda:N)") from None
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
    """Write to ``path.tmp`` and rename: a reader sees the old file or the new one. A write that
    fails (read-only folder, full disk) leaves no temporary file and is one line naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0].split("strerror:")[-1]
        raise InputError(f"{path}: cannot write the checkpoint ({reason.strip()}; is the disk full or read-only?)") from None


def read_checkpoint(path: str | Path, unreadable: str = "not a readable elegantviz checkpoint") -> dict:
    """A checkpoint as a dict, or one line saying why it cannot be read (``unreadable`` first)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, ImportError, IndexError, TypeError, KeyError, UnicodeDecodeError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: {unreadable} (truncated or not a checkpoint: {text})") from None
    if not isinstance(ck, dict) or "model" not in ck or not isinstance(ck["model"], dict):
        raise InputError(f"{path}: not an elegantviz checkpoint (no model weights)")
    return ck


def build_configured(cfg: TrainConfig, num_classes: int, in_chans: int, where: str, **extra) -> torch.nn.Module:
    """The network ``cfg.model`` names; a name or override that builds none is one line naming ``where``."""
    overrides = {**cfg.model.overrides, **extra}
    try:
        return build_model(cfg.model.name, num_classes, in_chans, **overrides)
    except KeyError as e:  # the registry's "unknown model ...; choose from ..."
        raise InputError(f"{where}: model.name: {e.args[0] if e.args else e}") from None
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"{where}: model.overrides {cfg.model.overrides} build no {cfg.model.name} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def family_of(cfg: TrainConfig) -> str | None:
    """The model family a config's preset belongs to (None for a name no longer in the registry)."""
    preset = PRESETS.get(cfg.model.name)
    return preset.family if preset else None


def start_from_stages(model: torch.nn.Module, cfg: TrainConfig, where: str) -> None:
    """Load the earlier-stage checkpoints ``model.init`` names into a staged model (GLNet, FCtL):
    each one is read, checked to be of the model's family, and handed to ``model.load_role``."""
    roles, known = cfg.model.init, tuple(getattr(model, "init_roles", ()))
    stage = getattr(model, "stage", None)
    if roles and not known:
        raise InputError(f"{where}: model.init: {cfg.model.name}{f' stage {stage}' if stage else ''} starts from "
                         "no earlier stage; remove model.init")
    unknown = [r for r in roles if r not in known]
    if unknown:
        raise InputError(f"{where}: model.init: unknown role {unknown[0]!r} for {cfg.model.name}; "
                         f"its roles are {', '.join(known)}")
    missing = [r for r in getattr(model, "required_roles", ()) if r not in roles]
    if missing:
        raise InputError(f"{where}: model.init: stage {stage} of {cfg.model.name} starts from earlier stages' "
                         f"checkpoints; add model.init.{missing[0]} (the {missing[0]} checkpoint's best.pt)")
    family = family_of(cfg)
    for role, file in roles.items():
        ck = read_checkpoint(file)
        if not isinstance(ck.get("config"), dict):
            raise InputError(f"{file}: not a checkpoint written by `elegantviz train` (no config), so not an "
                             f"earlier stage (model.init.{role} of {where})")
        other = family_of(config_from_dict(ck["config"], f"{file} config"))
        if other != family:
            raise InputError(f"{file}: a checkpoint of a {other or 'unknown'} model, not of {family} "
                             f"(model.init.{role} of {where})")
        try:
            model.load_role(role, ck["model"])
        except ValueError as e:
            raise InputError(f"{file}: does not fit model.init.{role} of {where} ({e})") from None


def fit_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load ``state`` into ``model``, or name what does not fit (missing, extra or reshaped weights:
    a class table, band count or config other than the weights were trained with)."""
    missing, extra, misshaped, junk = state_mismatch(model.state_dict(), state)
    shaped = [f"{k} is {theirs}, the model's {ours}" for k, theirs, ours in misshaped]
    parts = ([f"missing {', '.join(missing[:2])}{' ...' if len(missing) > 2 else ''}"] if missing else []) + \
            ([f"unexpected {', '.join(extra[:2])}{' ...' if len(extra) > 2 else ''}"] if extra else []) + shaped[:2] + \
            ([f"{junk[0]} is not a tensor"] if junk else [])
    if parts:
        raise InputError(f"{path}: its weights do not fit the model its config, classes and bands describe "
                         f"({'; '.join(parts)})")
    model.load_state_dict(state)  # float16 weights (export_model) are cast to the model's dtype


def checked_norm(path: Path, norm, in_chans: int) -> Normalization:
    """The stored normalisation: one finite mean and one finite std > 0 per band."""
    try:
        n = Normalization(**norm)
        ok = (len(n.mean) == len(n.std) == in_chans and all(math.isfinite(float(v)) for v in n.mean)
              and all(math.isfinite(float(v)) and float(v) > 0 for v in n.std))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{path}: its norm must give a finite mean and a std > 0 for each of its {in_chans} "
                         f"bands, got {norm!r:.120}")
    return n


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The network of a checkpoint written by `train` or `export`, on ``device``, in eval mode.

    Everything in it is checked first, so a damaged or mismatched file is one line naming it."""
    path = Path(ckpt_path)
    ck = read_checkpoint(path)
    missing = [k for k in ("config", "classes", "norm", "in_chans") if k not in ck]
    if missing:
        raise InputError(f"{path}: not an elegantviz checkpoint (no {', '.join(missing)})")
    cfg = config_from_dict(ck["config"], f"{path} config")
    table = ClassTable.from_dict(ck["classes"], f"{path} classes")
    in_chans = ck["in_chans"]
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise InputError(f"{path}: in_chans must be a whole number >= 1, got {in_chans!r}")
    norm = checked_norm(path, ck["norm"], in_chans)
    bands = list(ck.get("bands") or [f"band {i + 1}" for i in range(in_chans)])
    if len(bands) != in_chans:
        raise InputError(f"{path}: names {len(bands)} bands ({', '.join(map(str, bands))}) for {in_chans} input bands")
    bad = nonfinite_tensors({"model": ck["model"]})
    if bad:
        raise InputError(f"{path}: holds non-finite weights ({', '.join(bad[:3])}); the checkpoint is damaged")
    # the checkpoint holds every weight: a weight file the training started from is not read again
    files = {k: None for k in WEIGHT_FILES if k in cfg.model.overrides}
    model = build_configured(cfg, table.num_classes, in_chans, f"{path} config", **files)
    fit_weights(model, ck["model"], path)
    model.to(device).eval()
    meta = {k: ck[k] for k in ("iteration", "best_miou", "skipped", "log") if k in ck}
    return TrainedModel(model, table, norm, cfg, bands, in_chans, path, meta)


def export_model(checkpoint: str | Path, out: str | Path, half: bool = True) -> Path:
    """A checkpoint for predicting only: weights (float16 with ``half``: half the size, and
    float16 keeps what argmax needs), config, class table, normalisation and bands, plus the run's
    ``log.jsonl`` when it sits beside the checkpoint. No optimizer, no random states: it can
    predict and be fine-tuned from, not resumed. ``load_model`` reads it as any checkpoint."""
    src = Path(checkpoint)
    ck = read_checkpoint(src)
    model = {k: (v.half() if half and isinstance(v, torch.Tensor) and v.is_floating_point() else v)
             for k, v in ck["model"].items()}
    bad = nonfinite_tensors({"model": model})
    if bad:
        raise NonFiniteError(f"{src}: non-finite weights after export ({', '.join(bad[:3])})")
    log = src.with_name("log.jsonl")
    keep = ("config", "classes", "norm", "in_chans", "bands", "iteration", "best_miou", "skipped")
    exported = {"model": model, **{k: ck[k] for k in keep if k in ck},
                "log": log.read_text().splitlines() if log.is_file() else []}
    dst = Path(out)
    save_atomic(exported, dst)
    return dst
