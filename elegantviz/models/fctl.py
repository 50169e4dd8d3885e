"""FCtL (Li et al., ICCV'21 "From Contexts to Locality"; Liu et al., IJCV'24, fctl.txt): patch-wise
segmentation with a VGG FCN-8s whose pool5 is enriched by multi-scale contexts.

Every patch of the scene's :class:`~.patch_grid.PatchGrid` (>= 50 px overlap, last patch flush)
goes through the FCN-8s (:mod:`.fcn8s`); its contexts, the ``mul * p`` squares centred on it
(cut from the zero-padded scene, resized bilinearly to p: :func:`context_crops`), go through
frozen VGG trunks taken from earlier stages (pool5 under no_grad). LCF (:mod:`.lcf`: the
self, local -> medium and local -> large correlations on pool5 and their adaptive fusion) and
ALE (:mod:`.ale`, the journal's alternating local enhancement) rework pool5; the decoder gives
full-resolution logits, summed over the patch overlaps. Inria form (the official ``main``
branch, default): medium 2x, large 3x. DeepGlobe form (``Deepglobe`` branch): medium 3x,
``large_context="global"`` (the whole scene resized to p, its pool5 shared by the patches) and
``center_qk=True``.

Stages (``stage``), as the official scripts (baselines.md 3.4):
- ``"local"``: plain FCN-8s on patches (``train_pre``).
- ``"medium"`` / ``"large"``: the context through the same, weight-shared trainable trunk and one
  cross-correlation, pool5 + gamma * attn (``train_B10`` / ``train_B15``); role ``local``. In the
  DeepGlobe form ``"large"`` is the FCN-8s on the scene thumbnail (``train_global``, labels
  resized by nearest neighbour), optional role ``local``.
- ``"full"``: LCF (+ ALE); the context encoders are the frozen trunks of the medium and large
  models. Inria: initialised from the medium model (roles ``medium``, ``large``). DeepGlobe:
  from the local model (roles ``local``, ``medium``, ``large``). As the official key-matching
  load, no correlation weights carry over (the earlier stages' ``big`` module matches no key).

Choices and simplifications (baselines.md 3.8), besides those in :mod:`.fcn8s`, :mod:`.lcf`, :mod:`.ale`:
- ALE is the paper's, not the official code's (which has none); ``ale=False`` is the ICCV model
  (LCF alone), and so are the gated positional embeddings (``gpe=None``: on with ALE, off without).
- CSRN (the ICCV paper's refinement network) is omitted: it was never released.
- the context resize is bilinear with antialiasing, as the official PIL ``BILINEAR`` resize.
- TTA (what the official test scripts do: the 8 D4 views of the whole scene, logits summed) is
  ``predict --tta`` (:mod:`elegantviz.inference.patches`), for any patch model; the official
  validation has none, nor has this forward.
- the training forward returns all patches' logits of a scene at once; the loss is their mean
  focal loss. The official code sums the sub-batch means of the accumulated sub-batches, a loss
  (n_sub_batches x images) times larger: under Adam only the relative weight of the L2 weight
  decay differs, which the DeepGlobe configs compensate. ``grad_checkpoint=True`` recomputes each
  sub-batch in backward, so memory stays one sub-batch's activations, as the official accumulation.
- ``return_evidence`` adds no views (``views={}``): FCtL has a single output.

``fctl-cpu`` (:data:`PRESET_KWARGS`) is the same method at CPU size: a VGG-11 trunk at 1/8 of
the widths, conv6/conv7 256 wide (random init), the bilinear decoder with unscaled skips (a
trunk trained from scratch), patch 256 (3 x 3 patches with step 128 on a 512 scene), all 9
patches in one sub-batch, channels_last (2-3x faster convolutions on CPU). Contexts, frozen
encoders, LCC, MCF (and GPE) and ALE are all there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .ale import ALE, align_context
from .elegantseg import SegOutput
from .fcn8s import FCN8s, VGGTrunk
from .lcf import Correlation, MultiContextFusion, centred_map, feature_map, global_map, identity_map
from .patch_grid import PatchGrid, PatchOutput

__all__ = ["PRESET_KWARGS", "STAGES", "FCtL", "FCtLOutput", "context_crops", "thumbnail"]

STAGES = ("local", "medium", "large", "full")

PRESET_KWARGS = {
    # the Inria (official ``main``) form at full size: 140.6 M parameters in the local branch +
    # FCtL module, two frozen 14.7 M trunks, plus ALE's LFI blocks (the official code has no ALE)
    "fctl": dict(backbone="vgg16", patch_size=508, medium_context=2.0, large_context=3.0, sub_batch=4, ale=True,
                 grad_checkpoint=True),
    "fctl-cpu": dict(backbone="vgg11", width_div=8, width=256, decoder="bilinear", patch_size=256, medium_context=2.0,
                     large_context=3.0, sub_batch=9, ale=True, skip_scales=(1.0, 1.0), channels_last=True),
}


@dataclass
class FCtLOutput(SegOutput):
    """FCtL's training output: ``logits`` = ``patch_logits`` (n * len(boxes), K, p, p), every patch's
    full-resolution logits, image-major in the order of ``boxes`` ((top, left) in scene pixels);
    ``boxes=None`` for the global-thumbnail stage (one (n, K, p, p) map of the whole scene)."""

    patch_logits: torch.Tensor | None = None
    boxes: list[tuple[int, int]] | None = None
    patch: int = 0
    loss_kind: str = "fctl"


def context_crops(scene: torch.Tensor, boxes: Sequence[tuple[int, int]], patch: int, mul: float) -> torch.Tensor:
    """(len(boxes), c, p, p): for each (top, left) patch of (1, c, H, W) ``scene``, the
    ``mul * p`` square centred on it, zero outside the scene, resized bilinearly to p (the
    official ``global2bigpatch``, without padding the whole scene: each crop is padded alone)."""
    side = int(round(mul * patch))
    if (side - patch) % 2:
        raise ValueError(f"a {mul:g}x context of a {patch} px patch is {side} px: not centred on whole pixels")
    off, (H, W) = (side - patch) // 2, scene.shape[-2:]
    crops = []
    for y, x in boxes:
        t, l_ = y - off, x - off
        part = scene[:, :, max(t, 0) : min(t + side, H), max(l_, 0) : min(l_ + side, W)]
        pads = (max(-l_, 0), max(l_ + side - W, 0), max(-t, 0), max(t + side - H, 0))
        crops.append(resize(F.pad(part, pads) if any(pads) else part, patch))  # one at a time: no big copy
    return torch.cat(crops)


def resize(images: torch.Tensor, patch: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) == (patch, patch):
        return images
    return F.interpolate(images, size=(patch, patch), mode="bilinear", align_corners=False, antialias=True)


def thumbnail(scene: torch.Tensor, patch: int) -> torch.Tensor:
    """The whole scene resized bilinearly to p x p (DeepGlobe's global context)."""
    return resize(scene, patch)


class FCtL(nn.Module):
    """FCtL; ``forward(scene)`` -> :class:`PatchOutput` (eval: summed logits at scene size) or
    :class:`FCtLOutput` (train: every patch's logits). See the module doc for the stages."""

    output_stride = 1
    loss_kind = "fctl"
    gives_evidence = False
    patch_based = True

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        backbone: str = "vgg16",
        pretrained: bool = False,
        stage: str = "full",
        patch_size: int = 508,
        medium_context: float = 2.0,
        large_context: float | str = 3.0,
        min_overlap: int = 50,
        width: int = 4096,
        width_div: int = 1,
        decoder: str = "fcn8s",
        dropout: float = 0.5,
        skip_scales: Sequence[float] = (0.01, 1e-4),
        center_qk: bool = False,
        ale: bool = True,
        gpe: bool | None = None,
        ale_order: int = 2,
        ale_kernels: Sequence[int] = (3, 5, 7, 9),
        sub_batch: int = 4,
        grad_checkpoint: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"FCtL stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if large_context != "global" and not isinstance(large_context, (int, float)):
            raise ValueError(f"large_context must be a multiple of the patch or 'global', got {large_context!r}")
        if medium_context < 1 or (large_context != "global" and float(large_context) < 1):
            raise ValueError(f"contexts are at least the patch (multiples >= 1), got {medium_context}, {large_context}")
        if sub_batch < 1:
            raise ValueError(f"sub_batch must be at least 1, got {sub_batch}")
        self.num_classes, self.stage, self.patch_size, self.min_overlap = num_classes, stage, patch_size, min_overlap
        self.medium_context, self.large_context = float(medium_context), large_context
        self.sub_batch, self.grad_checkpoint = sub_batch, grad_checkpoint
        self.global_form = large_context == "global"
        self.min_side = patch_size
        self.backbone_name = backbone if width_div == 1 else f"{backbone}/{width_div}"
        self.fcn = FCN8s(num_classes, in_chans, backbone, pretrained, width, width_div, decoder,  # type: ignore[arg-type]
                         dropout, (skip_scales[0], skip_scales[1]))
        c = self.fcn.trunk.out_channels
        gpe = ale if gpe is None else gpe
        self.use_ale = stage == "full" and ale
        self.lcc = nn.ModuleDict()
        self.mcf: MultiContextFusion | None = None
        self.ale: ALE | None = None
        self.enc_medium: VGGTrunk | None = None
        self.enc_large: VGGTrunk | None = None
        if stage == "medium" or (stage == "large" and not self.global_form):
            self.lcc[stage] = Correlation(c, center_qk, gpe)
        elif stage == "full":
            for name in ("self", "medium", "large"):
                self.lcc[name] = Correlation(c, center_qk, gpe)
            self.mcf = MultiContextFusion(c, 3)
            if self.use_ale:
                self.ale = ALE(c, ale_order, ale_kernels)
            pad = self.fcn.trunk.pad
            self.enc_medium = VGGTrunk.build(backbone, in_chans, False, width_div, pad).requires_grad_(False)
            self.enc_large = VGGTrunk.build(backbone, in_chans, False, width_div, pad).requires_grad_(False)
            self.enc_medium.eval()
            self.enc_large.eval()
        self.channels_last = channels_last  # build_model moves a model with this set to channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # -- what the jobs read --------------------------------------------------------------------

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return ("focal",)

    @property
    def init_roles(self) -> tuple[str, ...]:
        """The earlier-stage checkpoints this stage can start from."""
        if self.stage in ("medium", "large"):
            return ("local",)
        if self.stage == "full":
            return ("local", "medium", "large") if self.global_form else ("medium", "large")
        return ()

    @property
    def required_roles(self) -> tuple[str, ...]:
        if self.stage == "large" and self.global_form:
            return ()  # the thumbnail FCN-8s may start from ImageNet (official) or from the local model
        return self.init_roles

    def parts(self) -> dict[str, list[nn.Module]]:
        """The parts the digest counts (baselines.md 3.6), for this stage."""
        parts: dict[str, list[nn.Module]] = {"trunk": [self.fcn.trunk], "conv6": [self.fcn.conv6],
                                             "conv7": [self.fcn.conv7], "heads": self.fcn.heads()}
        if len(self.lcc):
            parts["fctl"] = [self.lcc] + ([self.mcf] if self.mcf is not None else [])
        if self.ale is not None:
            parts["ale"] = [self.ale]
        if self.enc_medium is not None and self.enc_large is not None:
            parts["enc_medium"], parts["enc_large"] = [self.enc_medium], [self.enc_large]
        return parts

    def train(self, mode: bool = True) -> FCtL:
        super().train(mode)
        for enc in (self.enc_medium, self.enc_large):
            if enc is not None:
                enc.eval()  # frozen context encoders
        return self

    def load_role(self, role: str, state: dict[str, torch.Tensor]) -> None:
        """Copy an earlier stage's weights in: ``local`` -> the FCN-8s; ``medium`` -> the frozen
        medium encoder (its trunk) and, in the Inria form, the FCN-8s too; ``large`` -> the frozen
        large encoder (its trunk)."""
        if role not in self.init_roles:
            raise ValueError(f"FCtL stage {self.stage!r} takes no {role!r} checkpoint "
                             f"(it takes {', '.join(self.init_roles) or 'none'})")
        if role == "local":
            _copy(self.fcn, state, "fcn.", role)
            return
        ctx = "medium" if role == "medium" else "large"
        if not (role == "large" and self.global_form) and f"lcc.{ctx}.gamma" not in state:
            raise ValueError(f"the {role!r} checkpoint is not a {ctx}-context stage model (no lcc.{ctx}.gamma)")
        if role == "medium" and not self.global_form:
            _copy(self.fcn, state, "fcn.", role)
        _copy(self.enc_medium if role == "medium" else self.enc_large, state, "fcn.trunk.", role)

    # -- forward -------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, return_evidence: bool = False, upsample: bool = True,
                progress: Callable[[int], None] | None = None) -> SegOutput:
        if images.dim() != 4 or min(images.shape[-2:]) < self.min_side:
            raise ValueError(f"FCtL takes (n, c, H, W) scenes of at least {self.min_side} px a side, "
                             f"got {tuple(images.shape)}")
        if self.training:
            return self._train_forward(images)
        with torch.no_grad():
            logits = self._scene_logits(images, progress)
        return PatchOutput(logits, None, None, 1, views={})

    @property
    def _thumbnail_stage(self) -> bool:
        return self.stage == "large" and self.global_form

    def _train_forward(self, images: torch.Tensor) -> FCtLOutput:
        p = self.patch_size
        if self._thumbnail_stage:
            logits = self.fcn(thumbnail(images, p))
            return FCtLOutput(logits, None, patch_logits=logits, boxes=None, patch=p)
        boxes = PatchGrid(images.shape[-2], images.shape[-1], p, self.min_overlap).boxes()
        outs = []
        for i in range(images.shape[0]):
            scene = images[i : i + 1]
            glob = self._global_pool5(scene)
            for j in range(0, len(boxes), self.sub_batch):
                sub = boxes[j : j + self.sub_batch]
                frozen = self._frozen_contexts(scene, sub, glob)  # outside the checkpoint: run once
                if self.grad_checkpoint and torch.is_grad_enabled():
                    outs.append(checkpoint(self._patch_logits, scene, sub, frozen, use_reentrant=False))
                else:
                    outs.append(self._patch_logits(scene, sub, frozen))
        logits = torch.cat(outs)
        return FCtLOutput(logits, None, patch_logits=logits, boxes=boxes, patch=p)

    def _scene_logits(self, images: torch.Tensor, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """(n, K, H, W) logits summed over the patch overlaps (no averaging, as the official code)."""
        n, _, H, W = images.shape
        p = self.patch_size
        if self._thumbnail_stage:
            out = F.interpolate(self.fcn(thumbnail(images, p)).float(), size=(H, W), mode="bilinear",
                                align_corners=False)
            if progress is not None:
                progress(n)
            return out
        canvas = images.new_zeros((n, self.num_classes, H, W), dtype=torch.float32)
        boxes = PatchGrid(H, W, p, self.min_overlap).boxes()
        for i in range(n):
            scene = images[i : i + 1]
            glob = self._global_pool5(scene)
            for j in range(0, len(boxes), self.sub_batch):
                sub = boxes[j : j + self.sub_batch]
                logits = self._patch_logits(scene, sub, self._frozen_contexts(scene, sub, glob)).float()
                for (y, x), lg in zip(sub, logits):
                    canvas[i, :, y : y + p, x : x + p] += lg
                if progress is not None:
                    progress(len(sub))
        return canvas

    def _global_pool5(self, scene: torch.Tensor) -> torch.Tensor | None:
        """The frozen large encoder's pool5 of the scene thumbnail (DeepGlobe's full stage), once a scene."""
        if self.stage != "full" or not self.global_form:
            return None
        with torch.no_grad():
            return self.enc_large(self._layout(thumbnail(scene, self.patch_size)))[2]

    def _frozen_contexts(self, scene: torch.Tensor, boxes: list[tuple[int, int]], glob: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The frozen encoders' pool5 of the patches' medium and large contexts (full stage only)."""
        if self.stage != "full":
            return None
        p = self.patch_size
        with torch.no_grad():
            med5 = self.enc_medium(self._layout(context_crops(scene, boxes, p, self.medium_context)))[2]
            if glob is not None:
                return med5, glob
            return med5, self.enc_large(self._layout(context_crops(scene, boxes, p, float(self.large_context))))[2]

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """A trunk's input in the model's memory format (channels_last: oneDNN's fast convolutions on CPU)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _patch_logits(self, scene: torch.Tensor, boxes: list[tuple[int, int]],
                      frozen: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """(len(boxes), K, p, p) logits of the patches of (1, c, H, W) ``scene`` at ``boxes``."""
        p = self.patch_size
        local = self._layout(torch.cat([scene[:, :, y : y + p, x : x + p] for y, x in boxes]))
        pool3, pool4, pool5 = self.fcn.encode(local)
        if self.stage != "local":
            pool5 = pool5 + self._context_delta(scene, boxes, pool5, frozen)
        return self.fcn.decode(pool3, pool4, pool5, (p, p))

    def _fmap(self, kind: str, scene: torch.Tensor, boxes: list[tuple[int, int]]) -> torch.Tensor:
        """The local -> context pool5 cell map of context ``kind`` (see :mod:`.lcf`)."""
        n, dev, trunk = len(boxes), scene.device, self.fcn.trunk
        if kind == "self":
            pix = identity_map(n, dev)
        elif kind == "large" and self.global_form:
            pix = global_map(boxes, self.patch_size, tuple(scene.shape[-2:]), dev)
        else:
            mul = self.medium_context if kind == "medium" else float(self.large_context)
            pix = centred_map(mul, self.patch_size, n, dev)
        return feature_map(pix, trunk.pad, trunk.stride)

    def _context_delta(self, scene: torch.Tensor, boxes: list[tuple[int, int]], pool5: torch.Tensor,
                       frozen: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """What the contexts add to the local pool5 (0 at init: every gamma starts at 0)."""
        if frozen is None:  # medium / large stage: the weight-shared trainable trunk, one cross-correlation
            mul = self.medium_context if self.stage == "medium" else float(self.large_context)
            ctx5 = self.fcn.trunk(self._layout(context_crops(scene, boxes, self.patch_size, mul)))[2]
            return self.lcc[self.stage](pool5, ctx5, self._fmap(self.stage, scene, boxes))
        med5, big5 = frozen
        maps = {k: self._fmap(k, scene, boxes) for k in ("self", "medium", "large")}
        outs = [self.lcc["self"](pool5, pool5, maps["self"]), self.lcc["medium"](pool5, med5, maps["medium"]),
                self.lcc["large"](pool5, big5, maps["large"])]
        delta = self.mcf(outs)
        if self.ale is not None:
            hw = tuple(pool5.shape[-2:])
            delta = delta + self.ale(pool5, align_context(med5, maps["medium"], hw),
                                     align_context(big5, maps["large"], hw))
        return delta


def _copy(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, role: str) -> None:
    """Load ``module`` from the ``prefix`` keys of ``state``, or say which keys are missing / misshaped."""
    own = module.state_dict()
    missing = [k for k in own if prefix + k not in state]
    bad = [k for k in own if prefix + k in state and tuple(state[prefix + k].shape) != tuple(own[k].shape)]
    if missing or bad:
        what = [f"missing {', '.join(prefix + k for k in missing[:3])}"] if missing else []
        what += [f"misshaped {prefix}{k} {tuple(state[prefix + k].shape)} != {tuple(own[k].shape)}" for k in bad[:3]]
        raise ValueError(f"the FCtL {role!r} checkpoint does not fit: {'; '.join(what)}"
                         f"{' ...' if len(missing) + len(bad) > 3 else ''}")
    module.load_state_dict({k: state[prefix + k] for k in own})
