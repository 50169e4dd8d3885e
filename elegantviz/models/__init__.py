"""ElegantSeg / EHSNet models (imports torch and timm; import explicitly)."""

from .backbone import HRNetBackbone
from .depthwise import DepthwiseConv2d, depthwise_conv2d, select_impl
from .ecr import ECR, Evidence, efficient_attention, logit_margin, select_hard
from .elegantseg import ElegantSeg, Segment, SegOutput
from .heads import FCNHead
from .hrnet import HRNetUnit, find_hrnets, hrnet_units, run_hrnet
from .mlk import LRD, MLK, MLKUnit
from .receptive import Reach, reach
from .registry import PRESETS, ModelInfo, build_model, list_models, print_models

__all__ = [
    "HRNetBackbone",
    "DepthwiseConv2d",
    "depthwise_conv2d",
    "select_impl",
    "ECR",
    "Evidence",
    "efficient_attention",
    "logit_margin",
    "select_hard",
    "ElegantSeg",
    "SegOutput",
    "Segment",
    "HRNetUnit",
    "find_hrnets",
    "hrnet_units",
    "run_hrnet",
    "Reach",
    "reach",
    "FCNHead",
    "MLK",
    "LRD",
    "MLKUnit",
    "PRESETS",
    "ModelInfo",
    "build_model",
    "list_models",
    "print_models",
]
