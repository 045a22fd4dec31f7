"""The benchmark's (teacher, student) pairs and their loss sets.

A pair names its teacher config, its input size and its loss sets; a loss set is
``(KD config file, KD.LOSSES or None = that file's, extra config opts)``. Config paths are
relative to the repository root (:func:`repo_path`).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = ["DEFAULT_PAIRS", "LossSet", "PAIRS", "ROOT", "repo_path"]


def repo_path(path: str) -> str:
    """``path`` (relative to the repository root) as an absolute path."""
    return os.path.join(ROOT, path)


# A loss set: (KD config file, KD.LOSSES or None = that file's, extra config opts).
LossSet = Tuple[str, Optional[List[str]], List[Any]]

_VOC_PSP = "configs/voc/bcd_pspnet_r18.yaml"
_VOC_DLV3P = "configs/voc/bcd_deeplabv3plus_mobilenetv2.yaml"
_BD, _CD = "BoundaryDistillation", "ContextDistillation"


def _seg_sets(bcd_cfg: str, extra: Dict[str, LossSet]) -> Dict[str, LossSet]:
    sets: Dict[str, LossSet] = {
        "BCD (both)": (bcd_cfg, [_BD, _CD], []),
        "BCD boundary": (bcd_cfg, [_BD], []),
        "BCD context": (bcd_cfg, [_CD], []),
        "BCD context, chunked": (bcd_cfg, [_CD], ["KD.CONTEXT.IMPL", "chunked"]),
        "pixel KD": (bcd_cfg, ["PixelKD"], []),
        "CWD (logits)": (bcd_cfg, ["ChannelWiseDistillation"], []),
        "Structured KD": (bcd_cfg, ["StructuredKD"], []),
        "FitNet": (bcd_cfg, ["FitNet"], []),
        "CIRKD": (bcd_cfg, ["CIRKD"], []),
        "CIRKD, chunked": (bcd_cfg, ["CIRKD"], ["KD.CIRKD.IMPL", "chunked"]),
        "CIRKD, 2×2 pooled": (bcd_cfg, ["CIRKD"], ["KD.CIRKD.POOL", True]),
        "APD": (bcd_cfg, ["APD"], []),
        "APD + BCD": (bcd_cfg, ["APD", _BD, _CD], []),
    }
    sets.update(extra)
    return sets


def _det_sets(prefix: str, arch: str) -> Dict[str, LossSet]:
    """Loss sets of a COCO detector pair from the ``configs/coco/<x>_<arch>_r50.yaml`` files."""
    bcd = f"{prefix}/bcd_{arch}_r50.yaml"
    sets: Dict[str, LossSet] = {
        "BCD (both)": (bcd, [_BD, _CD], []),
        "BCD boundary": (bcd, [_BD], []),
        "BCD context": (bcd, [_CD], []),
        "BCD context, chunked": (bcd, [_CD], ["KD.CONTEXT.IMPL", "chunked"]),
        "BCD context, no token cap": (bcd, [_CD], ["KD.CONTEXT.TOKEN_CAP", 0]),
        "BCD on FPN (both)": (f"{prefix}/bcd_fpn_{arch}_r50.yaml", None, []),
        "PKD": (f"{prefix}/pkd_{arch}_r50.yaml", None, []),
        "FGD": (f"{prefix}/fgd_{arch}_r50.yaml", None, []),
        "CWD": (f"{prefix}/cwd_{arch}_r50.yaml", None, []),
        "BCD + PKD": (f"{prefix}/bcd_pkd_{arch}_r50.yaml", None, []),
        "BCD + FGD": (f"{prefix}/bcd_fgd_{arch}_r50.yaml", None, []),
        "BCD + CWD": (f"{prefix}/bcd_cwd_{arch}_r50.yaml", None, []),
        "APD": (f"{prefix}/apd_{arch}_r50.yaml", None, []),
    }
    if arch == "gfl":
        sets["LD"] = (f"{prefix}/ld_gfl_r50.yaml", None, [])
        sets["LD + BCD"] = (f"{prefix}/ld_bcd_gfl_r50.yaml", None, [])
    return {k: v for k, v in sets.items() if os.path.exists(repo_path(v[0]))}


# name -> task, teacher config, input (H, W), loss sets, a one-line description
PAIRS: Dict[str, Dict[str, Any]] = {
    "pspnet_r101_r18": {
        "task": "seg", "teacher": "configs/voc/pspnet_r101.yaml", "size": (512, 512),
        "sets": _seg_sets(_VOC_PSP, {
            "BCD + CWD": ("configs/voc/bcd_cwd_pspnet_r18.yaml", None, []),
            "BCD + CIRKD + pixel KD": ("configs/voc/bcd_cirkd_pspnet_r18.yaml", None, []),
        }),
        "what": "PSPNet-R101 (OS 8) → PSPNet-R18 (OS 8), VOC heads (21 classes)",
    },
    "deeplabv3plus_r101_mobilenetv2": {
        "task": "seg", "teacher": "configs/voc/deeplabv3plus_r101.yaml", "size": (512, 512),
        "sets": _seg_sets(_VOC_DLV3P, {}),
        "what": "DeepLabV3+-R101 → DeepLabV3+-MobileNetV2 (OS 8), VOC heads",
    },
    "retinanet_r101_r50": {
        "task": "det", "teacher": "configs/coco/retinanet_r101.yaml", "size": (800, 1333),
        "sets": _det_sets("configs/coco", "retinanet"),
        "what": "RetinaNet R101-FPN → R50-FPN, COCO heads (80 classes)",
    },
    "gfl_r101_r50": {
        "task": "det", "teacher": "configs/coco/gfl_r101.yaml", "size": (800, 1333),
        "sets": _det_sets("configs/coco", "gfl"),
        "what": "GFL R101-FPN → R50-FPN, COCO heads",
    },
    "demo_pspnet": {
        "task": "seg", "teacher": "configs/demo/teacher_pspnet_r18.yaml", "size": (512, 512), "demo": True,
        "sets": _seg_sets("configs/demo/bcd_student_pspnet_r18_w025.yaml", {}),
        "what": "demo PSPNet R18×0.5 → R18×0.25",
    },
    "demo_retinanet": {
        "task": "det", "teacher": "configs/demo/det_retinanet_teacher.yaml", "size": (320, 320), "demo": True,
        "sets": {
            "BCD (both)": ("configs/demo/det_bcd_retinanet_student.yaml", [_BD, _CD], []),
            "BCD context": ("configs/demo/det_bcd_retinanet_student.yaml", [_CD], []),
            "PKD": ("configs/demo/det_bcd_retinanet_student.yaml", ["PKD"], []),
            "FGD": ("configs/demo/det_bcd_retinanet_student.yaml", ["FGD"], []),
            "CWD": ("configs/demo/det_bcd_retinanet_student.yaml", ["ChannelWiseDistillation"], []),
        },
        "what": "demo RetinaNet R18×0.5 → R18×0.25",
    },
    "demo_gfl": {
        "task": "det", "teacher": "configs/demo/det_gfl_teacher.yaml", "size": (320, 320), "demo": True,
        "sets": {"LD": ("configs/demo/det_ld_gfl_student.yaml", ["LD"], [])},
        "what": "demo GFL R18×0.5 → R18×0.25",
    },
}
PAIRS["cascade_mask_rcnn_r101_r50"] = {
    "task": "det", "teacher": "configs/coco/cascade_mask_rcnn_r101.yaml", "size": (800, 1333),
    "sets": _det_sets("configs/coco", "cascade_mask_rcnn"),
    "what": "Cascade Mask R-CNN R101-FPN → R50-FPN (box and mask heads), COCO heads",
}

DEFAULT_PAIRS = {"seg": ["pspnet_r101_r18", "deeplabv3plus_r101_mobilenetv2"],
                 "det": ["retinanet_r101_r50", "gfl_r101_r50", "cascade_mask_rcnn_r101_r50"]}
