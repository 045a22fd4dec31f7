"""Backbones (torchvision / timm) and FPN, registered in ``BACKBONE_REGISTRY``."""
from .build import BACKBONE_REGISTRY, build_backbone
from .backbone import Backbone, ShapeSpec, get_norm
from .resnet import ResNet, build_resnet_backbone
from .mobilenet import MobileNetV2Backbone, build_mobilenetv2_backbone
from .efficientnet import EfficientNetBackbone, build_efficientnet_backbone
from .timm_backbone import TimmBackbone, build_timm_backbone
from .mit import MiTBackbone, build_mit_backbone
from .espnet import ESPNetEncoder, build_espnet_backbone
from .fpn import FPN, build_resnet_fpn_backbone
from .weights import (
    PretrainedWeightsError,
    load_torchvision_weights,
    resolve_weights,
    without_init_weights,
)

__all__ = [
    "BACKBONE_REGISTRY",
    "Backbone",
    "ESPNetEncoder",
    "EfficientNetBackbone",
    "FPN",
    "MiTBackbone",
    "MobileNetV2Backbone",
    "PretrainedWeightsError",
    "ResNet",
    "ShapeSpec",
    "TimmBackbone",
    "build_backbone",
    "build_efficientnet_backbone",
    "build_espnet_backbone",
    "build_mit_backbone",
    "build_mobilenetv2_backbone",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_timm_backbone",
    "get_norm",
    "load_torchvision_weights",
    "resolve_weights",
    "without_init_weights",
]
