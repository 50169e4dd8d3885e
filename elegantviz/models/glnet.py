"""GLNet (Chen et al., CVPR'19, glnet.txt): collaborative global-local networks, three training stages.

Two ResNet + linear FPN branches (:mod:`.fpn`): the global branch on the whole scene resized to
``global_size`` (bilinear, antialiased as the official PIL resize), the local branch on
full-resolution ``patch_size`` patches of the :class:`~.patch_grid.PatchGrid` (>= 50 px overlap,
last patch flush). Global->local: at every FPN stage (c2..c5, ps0, ps1, ps2) the local branch
concatenates the global map of that stage cropped at the patch's footprint and resized
(:func:`~.patch_grid.crop_footprints`). Local->global (stage 3): the local maps of all patches,
resized to their footprints, summed into global-size canvases and divided by the overlap count
(the full-resolution count template resized bilinearly to each level) feed the global FPN's
``_ext`` layers. The ensemble conv (3x3) takes [local ps3 | crop of the global ps3] per patch.

Stages (``stage``), what each trains and returns (losses in :mod:`elegantviz.losses.glnet`):
- ``"global"`` (1): the global branch alone; focal(global). Inference: global-only logits.
- ``"global2local"`` (2, starts from the stage-1 ``global``, frozen): local branch + ensemble;
  focal(local) + focal(ensemble) + 0.15 MSE(local ps3, crop of global ps3) per sub-batch.
  Inference: the ensemble aggregated, the global branch plain.
- ``"local2global"`` (3, from ``global`` (stage 1) and ``local`` (stage 2: local branch + ensemble)):
  the global branch with ``_ext`` + ensemble trained; the local branch frozen, fed by
  ``global_fixed``, a frozen copy of the stage-1 global model; focal(global) + focal(ensemble).
  Inference as the official ``eval_test`` (digest 2.4): global_fixed on the thumbnail, local
  patches in sub-batches (canvases built, each local ps3 kept), the global branch with the
  canvases, the ensemble per patch; the 1/4 logits of each patch upsampled to the patch and
  *summed* into the scene canvas. ``return_evidence`` adds the views ``global`` (global-only,
  upsampled to the scene) and ``local`` (local-only, summed over the patches).

Acceptable simplifications of digest 2.7 taken (and choices where the code left them):
- timm ``resnet50`` ``features_only`` (c2..c5), ``tv_in1k`` weights with ``pretrained=True``;
  the branches that start from ImageNet in a stage load them (stage 1 global, stage 2 local).
- crops and canvases by tensor slicing, canvases accumulated sub-batch by sub-batch on the
  device (the official code keeps every patch's maps on the host and merges at the end).
- rectangular scenes (the official code assumes squares, issue #20): ``global_fit="long"``
  resizes the longer side to ``global_size`` and keeps the aspect, the shorter side rounded to a
  multiple of 4 (the code's "size_g divisible by 4"); ``"square"`` is a global_size square.
- small scenes (issue #30): any scene of at least ``min_side`` = max(patch, global) px a side
  runs (one patch when it equals the patch); every footprint is at least one cell of every map.
  The code's "margin / 32 over 1.5" (>= 48 px overlap, so neighbours share a c5 cell) holds with
  the default 50 px ``min_overlap``; it is not enforced.
- nearest upsampling of the logits as the official code; ``upsample_mode="bilinear"`` is offered.
- inputs: whatever normalisation the caller applies (the official feeds [0, 1] RGB).
- training memory: stage 2 runs each sub-batch of patches under gradient checkpointing
  (``checkpoint=True``; BatchNorm statistics put back after the recompute, so they move once)
  and reduces the fmreg MSE per sub-batch in the forward, so one sub-batch's activations live at
  a time: on a 2448 px DeepGlobe scene 0.13 GiB is kept for backward plus 4.6 GiB while a
  sub-batch of 6 recomputes, where the plain step keeps 26.8 GiB (the official code called
  backward per sub-batch). Stage 3 keeps every patch's local ps3 (1.2 GB there, as the official
  code did on the host) and checkpoints the ensemble per sub-batch: 1.9 GiB kept (3.0 plain).
  At inference each patch's local ps3 is kept on the host (as the official code) while all of them
  take at most 2 GiB, else the local pass runs again for the ensemble (same logits; a 6800 x 7200
  scene has 240 patches, 7.9 GB of ps3); ``keep_local_ps3`` True or False forces either.
- the loss of a step is one scene's (batch 1); the official step took 6 scenes, their patches
  summed over sub-batches and the thumbnails' BatchNorm batched.
- the coarse-to-fine variant (never released, issue #31) is not offered.

``PRESET_KWARGS["glnet-cpu"]`` differs from the full-size model in width and size only:
ResNet-18 at half width (stem 32, stages 32..256; random init, no ImageNet weights), FPN width 32
(ps3 64 channels), 256 px patches and a 256 px thumbnail (a 512 px scene: 3 x 3 patches, step
128), all 9 patches in one sub-batch, no checkpointing; every mechanism above is unchanged.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from ..losses.glnet import GLNET_TERMS
from .elegantseg import SegOutput
from .fpn import (Branch, GlobalFPN, LocalFPN, Pyramid, add_to_canvases, average_canvases, crop_pyramid, init_normal,
                  zero_canvases)
from .patch_grid import PatchGrid, PatchOutput, crop_footprints

__all__ = ["GLNet", "GLNetOutput", "STAGES", "STAGE_ROLES", "PRESET_KWARGS"]

STAGES = ("global", "global2local", "local2global")
STAGE_ROLES = {"global": (), "global2local": ("global",), "local2global": ("global", "local")}

PRESET_KWARGS: dict[str, dict] = {
    "glnet": dict(backbone="resnet50.tv_in1k", fpn_width=256, patch_size=508, global_size=508, sub_batch=6),
    # half-width ResNet-18 (no ImageNet weights) and a 32-wide FPN: a stage-2 step (9 patches of 256 px,
    # forward and backward) takes about 0.7 s on 2 cores, where full width and FPN 128 take about 4 s
    "glnet-cpu": dict(backbone="resnet18", backbone_kwargs={"channels": (32, 64, 128, 256), "stem_width": 32},
                      fpn_width=32, patch_size=256, global_size=256, sub_batch=9, checkpoint=False),
}

Box = tuple[int, int]
KEEP_PS3_BYTES = 2 << 30  # inference keeps the patches' local ps3 up to this, else recomputes it


@dataclass
class GLNetOutput(SegOutput):
    """What a GLNet training loss needs (training mode only). ``logits`` is the stage's main
    output (stage 1: the global logits; else the ensemble logits of all patches); the patch lists
    are per sub-batch, at 1/4 of the patch, with ``boxes`` the (top, left) of their patches."""

    stage: str = "global"
    global_logits: torch.Tensor | None = None  # (1, K, gh / 4, gw / 4), stages 1 and 3
    local_logits: list[torch.Tensor] = field(default_factory=list)  # stage 2
    ensemble_logits: list[torch.Tensor] = field(default_factory=list)  # stages 2 and 3
    fmreg: list[torch.Tensor] = field(default_factory=list)  # stage 2: MSE(local ps3, global ps3 crop) per sub-batch
    boxes: list[list[Box]] = field(default_factory=list)
    patch_size: int = 0
    loss_kind: str = "glnet"


class _KeepBufferValues:
    """Checkpoint recompute context: BatchNorm statistics put back as they were before it."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.saved = [(b, b.clone()) for b in self.module.buffers()]

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, v in self.saved:
                b.copy_(v)


class GLNet(nn.Module):
    """GLNet at one training ``stage``; ``forward(scene)`` runs the patch grid itself (see module doc)."""

    output_stride = 4
    loss_kind = "glnet"
    gives_evidence = False
    patch_based = True

    def __init__(self, num_classes: int, in_chans: int = 3, backbone: str = "resnet50.tv_in1k",
                 pretrained: bool = False, stage: str = "local2global", patch_size: int = 508,
                 global_size: int = 508, fpn_width: int = 256, sub_batch: int = 6, min_overlap: int = 50,
                 global_fit: str = "long", upsample_mode: str = "nearest", checkpoint: bool = True,
                 keep_local_ps3: bool | None = None, backbone_kwargs: dict | None = None):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"GLNet stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if global_size % 4 or global_size < 32:
            raise ValueError(f"global_size must be a multiple of 4 of at least 32, got {global_size}")
        if global_fit not in ("long", "square"):
            raise ValueError(f"global_fit must be 'long' or 'square', got {global_fit!r}")
        if upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample_mode must be 'nearest' or 'bilinear', got {upsample_mode!r}")
        if sub_batch < 1 or patch_size < 32:
            raise ValueError(f"need sub_batch >= 1 and patch_size >= 32, got {sub_batch} and {patch_size}")
        self.num_classes, self.stage = num_classes, stage
        self.backbone_name = f"{backbone}*" if backbone_kwargs else backbone  # *: widths of its own
        self.patch_size, self.global_size, self.sub_batch = patch_size, global_size, sub_batch
        self.min_overlap = min_overlap
        self.global_fit, self.upsample_mode = global_fit, upsample_mode
        self.checkpoint, self.keep_local_ps3 = checkpoint, keep_local_ps3
        self.min_side = max(patch_size, global_size)
        ext = stage == "local2global"
        self.global_branch = Branch(backbone, in_chans, pretrained and stage == "global",
                                    lambda ch: GlobalFPN(ch, num_classes, fpn_width, with_ext=ext), backbone_kwargs)
        if stage != "global":
            self.local_branch = Branch(backbone, in_chans, pretrained and stage == "global2local",
                                       lambda ch: LocalFPN(ch, num_classes, fpn_width), backbone_kwargs)
            self.ensemble = nn.Conv2d(4 * fpn_width, num_classes, 3, padding=1)
            init_normal(self.ensemble)
        if ext:  # the stage-1 global model, frozen: it guides the (frozen) local branch
            self.global_fixed = Branch(backbone, in_chans, False, lambda ch: GlobalFPN(ch, num_classes, fpn_width),
                                       backbone_kwargs)
        for part in self.frozen_parts():
            part.requires_grad_(False)
        self.train()

    # ---- what the jobs read -------------------------------------------------------------------
    @property
    def loss_terms(self) -> tuple[str, ...]:
        return GLNET_TERMS[self.stage]

    @property
    def init_roles(self) -> tuple[str, ...]:
        return STAGE_ROLES[self.stage]

    @property
    def required_roles(self) -> tuple[str, ...]:
        return STAGE_ROLES[self.stage]

    def parts(self) -> dict[str, list[nn.Module]]:
        """The parts the digest counts (2.5), disjoint; those of this stage only."""
        g = self.global_branch
        out = {"resnet_global": [g.backbone], "fpn_global": [g.fpn.plain, g.fpn.classify]}
        if g.fpn.ext is not None:
            out["fpn_global_ext"] = [g.fpn.ext]
        if self.stage != "global":
            out.update(resnet_local=[self.local_branch.backbone], fpn_local=[self.local_branch.fpn],
                       ensemble=[self.ensemble])
        if self.stage == "local2global":
            out["global_fixed"] = [self.global_fixed]
        return out

    def frozen_parts(self) -> list[nn.Module]:
        """Parts that this stage does not train (kept in eval mode, no gradients)."""
        if self.stage == "global2local":
            return [self.global_branch]
        if self.stage == "local2global":  # the plain global path is unused once the _ext layers run
            return [self.local_branch, self.global_fixed, self.global_branch.fpn.plain]
        return []

    def train(self, mode: bool = True) -> "GLNet":
        super().train(mode)
        for part in self.frozen_parts():
            part.eval()
        return self

    def load_role(self, role: str, state: dict[str, torch.Tensor]) -> None:
        """Copy what an earlier stage's state_dict provides for ``role``: ``global`` (stage 1) -> the
        global branch (its plain path; stage 3: also ``global_fixed``); ``local`` (stage 2) -> the
        local branch and the ensemble conv."""
        if role not in self.init_roles:
            takes = ", ".join(self.init_roles) or "none"
            raise ValueError(f"GLNet stage {self.stage!r} takes no {role!r} checkpoint (it takes: {takes})")
        if role == "global":
            targets = [("global_branch.", self.global_branch, "global_branch.")]
            if self.stage == "local2global":
                targets.append(("global_branch.", self.global_fixed, "global_fixed."))
        else:
            targets = [("local_branch.", self.local_branch, "local_branch."), ("ensemble.", self.ensemble, "ensemble.")]
        loads, missing, misshaped = [], [], []
        for src, module, _ in targets:
            own = {k: v for k, v in module.state_dict().items() if not k.startswith("fpn.ext.")}
            for k, v in own.items():
                if src + k not in state:
                    missing.append(src + k)
                elif tuple(state[src + k].shape) != tuple(v.shape):
                    misshaped.append(f"{src + k} {tuple(state[src + k].shape)} != {tuple(v.shape)}")
            loads.append((module, {k: state.get(src + k) for k in own}))
        if missing or misshaped:
            few = lambda names: ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")  # noqa: E731
            bad = [f"missing {len(missing)} keys ({few(missing)})"] if missing else []
            bad += [f"misshaped {few(misshaped)}"] if misshaped else []
            raise ValueError(f"the {role!r} checkpoint does not fit GLNet stage {self.stage!r}: {'; '.join(bad)}")
        for module, sub in loads:
            module.load_state_dict(sub, strict=False)

    # ---- pieces -------------------------------------------------------------------------------
    def thumbnail_size(self, h: int, w: int) -> tuple[int, int]:
        """The global branch's input size for an h x w scene (see ``global_fit``)."""
        g = self.global_size
        if self.global_fit == "square" or h == w:
            return g, g
        short = max(4, 4 * round(g * min(h, w) / max(h, w) / 4))
        return (g, short) if h > w else (short, g)

    def thumbnail(self, images: torch.Tensor) -> torch.Tensor:
        size = self.thumbnail_size(*images.shape[-2:])
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)

    def cut(self, images: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
        p = self.patch_size
        return torch.cat([images[:, :, y : y + p, x : x + p] for y, x in boxes])

    def local_pass(self, patches: torch.Tensor, global_pyr: Pyramid, boxes: list[Box], scene_hw: tuple[int, int]
                   ) -> tuple[torch.Tensor, Pyramid, torch.Tensor]:
        """The local branch on a sub-batch of patches, each stage fed the crop of the global map."""
        c = self.local_branch.backbone(patches)
        crops = crop_pyramid(global_pyr, boxes, self.patch_size, scene_hw, [x.shape[-2:] for x in c])
        return self.local_branch.fpn(c, crops)

    def ensemble_logits(self, ps3_local: torch.Tensor, ps3_global: torch.Tensor, boxes: list[Box],
                        scene_hw: tuple[int, int]) -> torch.Tensor:
        crop = crop_footprints(ps3_global, boxes, self.patch_size, scene_hw, ps3_local.shape[-2:])
        return self.ensemble(torch.cat([ps3_local, crop], dim=1))

    def _g2l_step(self, patches, global_pyr, ps3_global, boxes, scene_hw):
        local_logits, _, ps3_l = self.local_pass(patches, global_pyr, boxes, scene_hw)
        crop = crop_footprints(ps3_global, boxes, self.patch_size, scene_hw, ps3_l.shape[-2:])
        mse = F.mse_loss(ps3_l.float(), crop.float())
        return local_logits, self.ensemble(torch.cat([ps3_l, crop], dim=1)), mse

    def _run(self, fn, *args, keep: nn.Module | None = None):
        """``fn(*args)``, under gradient checkpointing when training with ``checkpoint``; buffers
        of ``keep`` are restored after the recompute (BatchNorm statistics move once)."""
        if not (self.checkpoint and self.training and torch.is_grad_enabled()):
            return fn(*args)
        ctx = (lambda: (nullcontext(), _KeepBufferValues(keep))) if keep is not None else None
        kwargs = {"context_fn": ctx} if ctx is not None else {}
        return grad_checkpoint(fn, *args, use_reentrant=False, **kwargs)

    def _local_canvases(self, images, guide_pyr, subs, scene_hw, grid, on_patches=None, progress=None):
        """Stage 3's local pass (frozen, no gradients): the averaged canvases and each sub-batch's ps3."""
        canvases, kept = zero_canvases(guide_pyr), []
        with torch.no_grad():
            for sub in subs:
                logits, pyr, ps3 = self.local_pass(self.cut(images, sub), guide_pyr, sub, scene_hw)
                add_to_canvases(canvases, pyr, sub, self.patch_size, scene_hw)
                if self.training:
                    kept.append(ps3)
                else:  # on the host, as the official code; recomputed instead past a few GB (same logits)
                    keep = self.keep_local_ps3
                    if keep is None:
                        keep = ps3[0].numel() * ps3.element_size() * len(grid) <= KEEP_PS3_BYTES
                    kept.append((ps3.cpu() if ps3.is_cuda else ps3) if keep else None)
                if on_patches is not None:
                    on_patches(logits, sub)
                if progress is not None:
                    progress(len(sub))
            return average_canvases(canvases, grid.counts()), kept

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, return_evidence: bool = False, upsample: bool = True,
                progress: Callable[[int], None] | None = None) -> SegOutput:
        """One whole scene (1, c, H, W). Eval: a :class:`PatchOutput` at scene size (no gradients;
        ``upsample`` is ignored; ``progress(k)`` after each sub-batch of the local pass, stage 1
        once with all patches). Training: a :class:`GLNetOutput` for the stage's loss."""
        n, _, h, w = images.shape
        if n != 1:
            raise ValueError(f"GLNet takes one whole scene at a time, got a batch of {n}")
        if min(h, w) < self.min_side:
            raise ValueError(f"GLNet ({self.patch_size} px patches, {self.global_size} px global) needs scenes of at "
                             f"least {self.min_side} px a side, got {h} x {w}")
        grid = PatchGrid(h, w, self.patch_size, self.min_overlap)
        boxes = grid.boxes()
        subs = [boxes[i : i + self.sub_batch] for i in range(0, len(boxes), self.sub_batch)]
        if self.training:
            return self._train_forward(images, grid, subs)
        with torch.no_grad():
            return self._infer(images, grid, subs, return_evidence, progress)

    def _train_forward(self, images, grid, subs) -> GLNetOutput:
        hw, thumb = (grid.h, grid.w), self.thumbnail(images)
        base = dict(aux_logits=None, stage=self.stage, patch_size=self.patch_size, stride=self.output_stride)
        if self.stage == "global":
            g_logits = self.global_branch.fpn(self.global_branch.backbone(thumb))[0]
            return GLNetOutput(g_logits, global_logits=g_logits, **base)
        if self.stage == "global2local":
            with torch.no_grad():
                _, g_pyr, g_ps3 = self.global_branch.fpn(self.global_branch.backbone(thumb))
            local, ens, mse = zip(*(self._run(self._g2l_step, self.cut(images, sub), g_pyr, g_ps3, sub, hw,
                                              keep=self.local_branch) for sub in subs))
            return GLNetOutput(torch.cat(ens), local_logits=list(local), ensemble_logits=list(ens), fmreg=list(mse),
                               boxes=subs, **base)
        with torch.no_grad():
            _, fixed_pyr, _ = self.global_fixed.fpn(self.global_fixed.backbone(thumb))
        canvases, kept = self._local_canvases(images, fixed_pyr, subs, hw, grid)
        g_logits, _, g_ps3 = self.global_branch.fpn(self.global_branch.backbone(thumb), canvases)
        ens = [self._run(self.ensemble_logits, ps3, g_ps3, sub, hw) for ps3, sub in zip(kept, subs)]
        return GLNetOutput(torch.cat(ens), global_logits=g_logits, ensemble_logits=ens, boxes=subs, **base)

    def _paste(self, canvas: torch.Tensor, logits: torch.Tensor, boxes: list[Box]) -> None:
        """Patch logits (at 1/4) upsampled to the patch and summed into the scene canvas."""
        p = self.patch_size
        up = F.interpolate(logits.float(), size=(p, p), mode=self.upsample_mode,
                           **({} if self.upsample_mode == "nearest" else {"align_corners": False}))
        for (y, x), u in zip(boxes, up):
            canvas[0, :, y : y + p, x : x + p] += u

    def _to_scene(self, logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        kw = {} if self.upsample_mode == "nearest" else {"align_corners": False}
        return F.interpolate(logits.float(), size=hw, mode=self.upsample_mode, **kw)

    def _infer(self, images, grid, subs, return_evidence, progress) -> PatchOutput:
        hw, thumb = (grid.h, grid.w), self.thumbnail(images)
        canvas = None if self.stage == "global" else images.new_zeros((1, self.num_classes, *hw), dtype=torch.float32)
        local_canvas = torch.zeros_like(canvas) if return_evidence and canvas is not None else None
        keep_local = None if local_canvas is None else (lambda logits, sub: self._paste(local_canvas, logits, sub))
        if self.stage == "global":
            g_logits = self.global_branch.fpn(self.global_branch.backbone(thumb))[0]
            canvas = self._to_scene(g_logits, hw)
            if progress is not None:
                progress(len(grid))
        elif self.stage == "global2local":
            g_logits, g_pyr, g_ps3 = self.global_branch.fpn(self.global_branch.backbone(thumb))
            for sub in subs:
                local_logits, _, ps3 = self.local_pass(self.cut(images, sub), g_pyr, sub, hw)
                self._paste(canvas, self.ensemble_logits(ps3, g_ps3, sub, hw), sub)
                if keep_local is not None:
                    keep_local(local_logits, sub)
                if progress is not None:
                    progress(len(sub))
        else:
            _, fixed_pyr, _ = self.global_fixed.fpn(self.global_fixed.backbone(thumb))
            canvases, kept = self._local_canvases(images, fixed_pyr, subs, hw, grid, keep_local, progress)
            g_logits, _, g_ps3 = self.global_branch.fpn(self.global_branch.backbone(thumb), canvases)
            for ps3, sub in zip(kept, subs):
                if ps3 is None:  # not kept: the local pass again
                    ps3 = self.local_pass(self.cut(images, sub), fixed_pyr, sub, hw)[2]
                ps3 = ps3.to(images.device)
                self._paste(canvas, self.ensemble_logits(ps3, g_ps3, sub, hw), sub)
        views = {}
        if return_evidence:
            # nearest upsampling commutes with argmax: the labels at 1/4, then upsampled (no K x H x W map)
            views["global"] = (self._to_scene(g_logits.argmax(1, keepdim=True), hw)[:, 0].long()
                               if self.upsample_mode == "nearest" else self._to_scene(g_logits, hw).argmax(1))
            if local_canvas is not None:
                views["local"] = local_canvas.argmax(1)
        return PatchOutput(canvas, None, None, 1, views=views)

