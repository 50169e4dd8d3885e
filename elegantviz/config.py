"""Training configs: dataclasses, YAML in and out, named configs shipped in elegantviz/configs.

Unknown keys are errors (a typo in a YAML file must not silently fall back to a default), and
every value is checked by type, range and form when the file is read, so a bad value is
refused before any work starts, with the file and the key named.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from elegantviz.errors import InputError
from elegantviz.values import SEED_MAX, device_name, label_name, parse_size


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # scene stores (paths or URLs)
    val: list[str] = field(default_factory=list)
    label: str = "gt"
    mode: str = "holistic"  # holistic: whole scenes; sliced: random crops (the paper's ablation)
    crop_size: int = 512  # at least 64: HRNet's stride-32 branch needs 2 x 2 cells to normalise a batch
    level: int = 0  # pyramid level to train on (1 halves the resolution)
    flips: bool = True
    rot90: bool = True


@dataclass
class ModelConfig:
    name: str = "elegantseg-cpu"
    pretrained: bool = False
    overrides: dict = field(default_factory=dict)
    # earlier-stage checkpoints a staged model starts from, by the role the model gives them
    # (GLNet's stage 2: {global: runs/glnet-1/best.pt}); relative paths are from where train runs
    init: dict = field(default_factory=dict)


@dataclass
class LossConfig:
    w_bd: float = 1.0
    w_aux: float = 0.4
    sobel_ksize: int = 5
    class_weights: list[float] | None = None  # per class (the class table's order): rare classes weigh more


@dataclass
class OptimConfig:
    """Optimizer and schedule. The defaults are the paper's: SGD, a constant warm-up, then step
    decays of the base rate (``schedule: step``). ``poly`` is GLNet's, FCtL's, ISDNet's and mmseg's
    ``(1 - t)^power``; ``cosine`` decays to ``min_lr``. ``warmup: linear`` ramps from
    ``warmup_lr`` to ``lr`` instead of holding ``warmup_lr``."""

    optimizer: str = "sgd"  # sgd | adam (L2 weight decay, GLNet's and FCtL's) | adamw
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam and adamw
    weight_decay: float = 5e-4
    schedule: str = "step"  # step | poly | cosine
    warmup: str = "constant"  # constant | linear
    warmup_iters: int = 1500
    warmup_lr: float = 5e-5
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.85])  # step: fractions of iters
    gamma: float = 0.1  # step: 0.01 -> 0.001 -> 0.0001
    power: float = 0.9  # poly
    min_lr: float = 0.0  # poly and cosine end here
    head_lr_mult: float = 10.0
    grad_clip: float | None = None  # max global L2 norm of the gradients
    accumulate: int = 1  # gradient accumulation: effective batch = accumulate scenes
    max_bad_steps: int = 3  # non-finite loss or gradients this many steps in a row: stop


@dataclass
class MemoryConfig:
    policy: str = "auto"  # auto | none | checkpoint | disk | checkpoint+disk | checkpoint+band(+disk) | host
    budget: str | None = None  # e.g. 12GB; default: free memory with a margin
    spill_dir: str | None = None
    threshold: str = "1MiB"  # smaller saved tensors stay where they are


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    iters: int = 40000
    val_every: int = 1000
    ckpt_every: int = 1000
    log_every: int = 10
    out_dir: str = "runs/elegantseg"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    precise_bn: int = 0  # recompute BatchNorm statistics on this many whole training scenes before
    #                      validation and checkpoints (0: keep the running statistics)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# value ranges (inclusive; None: unbounded) and choices, by dotted key: checked when a config is read,
# so a bad value is refused before any work starts, with the file and the key named
RANGES: dict[str, tuple[float | None, float | None]] = {
    "iters": (1, None), "val_every": (1, None), "ckpt_every": (1, None), "log_every": (1, None), "precise_bn": (0, None),
    "data.crop_size": (64, None), "data.level": (0, 20), "loss.w_bd": (0, None), "loss.w_aux": (0, None),
    "loss.sobel_ksize": (1, 31), "optim.lr": (0, None), "optim.momentum": (0, 1), "optim.weight_decay": (0, None),
    "optim.warmup_iters": (0, None), "optim.warmup_lr": (0, None), "optim.gamma": (0, None), "optim.power": (0, None),
    "optim.min_lr": (0, None), "optim.head_lr_mult": (0, None), "optim.grad_clip": (0, None),
    "optim.accumulate": (1, None), "optim.max_bad_steps": (1, None), "seed": (0, SEED_MAX),
}


def _betas(v: list) -> None:
    if len(v) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in v):
        raise ValueError(f"must be two numbers in [0, 1), got {v!r}")


def _milestones(v: list) -> None:
    if not all(_is_number(m) and m >= 0 for m in v):
        raise ValueError(f"must be numbers >= 0 (fractions of iters below 1, else iterations), got {v!r}")


def _scene_paths(v: list) -> None:
    if not all(isinstance(p, str) and p.strip() for p in v):
        raise ValueError(f"must be a list of scene store paths, got {v!r}")


def _roles(v: dict) -> None:
    if not all(isinstance(k, str) and k.strip() and isinstance(p, str) and p.strip() for k, p in v.items()):
        raise ValueError(f"must map role names to checkpoint paths (e.g. {{global: runs/glnet-1/best.pt}}), got {v!r}")


def _class_weights(v: list) -> None:
    if not v or not all(_is_number(w) and w >= 0 for w in v):
        raise ValueError(f"must be a list of numbers >= 0, one per class, got {v!r}")


def _odd(v: int) -> None:
    if v < 3 or v % 2 == 0:
        raise ValueError(f"must be an odd number from 3 to 31, got {v}")


def _not_blank(v: str) -> None:
    if not v.strip():
        raise ValueError(f"must not be empty, got {v!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# further checks of form, by dotted key (each raises ValueError saying what the value must be)
FORMS: dict[str, Any] = {
    "optim.betas": _betas, "optim.milestones": _milestones, "data.train": _scene_paths, "data.val": _scene_paths,
    "loss.sobel_ksize": _odd, "loss.class_weights": _class_weights, "out_dir": _not_blank, "data.label": label_name,
    "model.name": _not_blank,
    "model.init": _roles, "device": device_name, "memory.budget": parse_size, "memory.threshold": parse_size,
}
CHOICES: dict[str, tuple[str, ...]] = {
    "data.mode": ("holistic", "sliced"), "optim.optimizer": ("sgd", "adam", "adamw"),
    "optim.schedule": ("step", "poly", "cosine"), "optim.warmup": ("constant", "linear"),
}


def _check(value: Any, hint: Any, key: str, where: str) -> Any:
    """``value`` as the field's type (an int where a float is asked is fine), or a one-line error."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if optional:
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    kind = typing.get_origin(hint) or hint
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) if kind is float else
          isinstance(value, kind))
    if not ok:
        name = getattr(kind, "__name__", str(kind))
        raise InputError(f"{where}: {key} must be {'a finite ' if kind is float else ''}{name}, got {value!r}")
    if key in RANGES:
        lo, hi = RANGES[key]
        if (lo is not None and value < lo) or (hi is not None and value > hi) or (key in ("optim.lr",) and value <= 0):
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise InputError(f"{where}: {key} must be {'> 0' if key == 'optim.lr' else span}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise InputError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in FORMS:
        try:
            FORMS[key](value)
        except ValueError as e:
            raise InputError(f"{where}: {key} {e}") from None
    return float(value) if kind is float else value


def _build(cls, data: Any, where: str, origin: str | None = None, prefix: str = ""):
    """``where`` names the mapping (``file.optim``); values are named by ``origin: key``."""
    origin = origin or where
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        factory = known[name].default_factory
        nested = isinstance(factory, type) and dataclasses.is_dataclass(factory)
        key = prefix + name
        kwargs[name] = (_build(factory, value, f"{where}.{name}", origin, key + ".") if nested
                        else _check(value, hints[name], key, origin))
    return cls(**kwargs)


def config_from_dict(data: dict, where: str = "config") -> TrainConfig:
    return _build(TrainConfig, data or {}, where)


def load_config(path: str | Path) -> TrainConfig:
    """A YAML file, or the name of a config shipped with elegantviz (see `list_configs`)."""
    p = Path(path)
    if not p.exists():
        shipped = resources.files("elegantviz") / "configs" / f"{path}.yaml"
        if not shipped.is_file():
            raise InputError(f"{path}: no such config file, nor a shipped config ({', '.join(list_configs())})")
        text, where = shipped.read_text(), f"elegantviz/configs/{path}.yaml"
    else:
        where = str(p)
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not a text file"
            raise InputError(f"{where}: cannot read the config ({reason})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
    return config_from_dict(data, where)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def list_configs() -> list[str]:
    folder = resources.files("elegantviz") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
