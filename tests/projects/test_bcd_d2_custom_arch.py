"""A Detectron2 meta-architecture the project has never seen, registered here, distils through
projects/bcd/train_net.py with a config only (no change to bcd_d2).

``BoxCentreHeatmap`` follows Detectron2's conventions and nothing of ours: ``pixel_mean`` /
``pixel_std`` buffers, a backbone from ``build_backbone`` (so ``size_divisibility``), no
``preprocess_image`` (the project then pads as Detectron2's SemanticSegmentor does), a loss dict
in training and ``Instances`` in inference. Its teacher is a tiny Detectron2 RetinaNet: the KD
features (the ResNet stages for BCD, P3 for CWD) exist under the same names in both.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

pytest.importorskip("detectron2", reason="Detectron2 is not installed (projects/bcd/README.md)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_CONFIGS = os.path.join(REPO, "projects", "bcd", "configs", "test")


def _register():
    import torch.nn.functional as F
    from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
    from detectron2.structures import Boxes, ImageList, Instances
    from torch import nn

    if "BoxCentreHeatmap" in META_ARCH_REGISTRY:
        return

    @META_ARCH_REGISTRY.register()
    class BoxCentreHeatmap(nn.Module):
        """Per-class heatmap of box centres on P3 (a toy CenterNet), Detectron2 style."""

        def __init__(self, cfg):
            super().__init__()
            self.backbone = build_backbone(cfg)
            self.num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
            ch = self.backbone.output_shape()["p3"].channels
            self.head = nn.Conv2d(ch, self.num_classes, 3, padding=1)
            self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
            self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

        def forward(self, batched_inputs):
            images = [(x["image"].to(self.pixel_mean.device) - self.pixel_mean) / self.pixel_std
                      for x in batched_inputs]
            images = ImageList.from_tensors(images, self.backbone.size_divisibility)
            logits = self.head(self.backbone(images.tensor)["p3"])  # B x K x H/8 x W/8
            if self.training:
                target = torch.zeros_like(logits)
                for i, x in enumerate(batched_inputs):
                    inst = x["instances"]
                    c = inst.gt_boxes.get_centers() / 8
                    for (cx, cy), k in zip(c.long().tolist(), inst.gt_classes.tolist()):
                        target[i, k, min(cy, target.shape[2] - 1), min(cx, target.shape[3] - 1)] = 1.0
                return {"loss_heatmap": F.binary_cross_entropy_with_logits(logits, target)}
            out = []
            for i, (h, w) in enumerate(images.image_sizes):
                score, idx = logits[i].sigmoid().flatten().topk(5)
                k, rest = idx // (logits.shape[2] * logits.shape[3]), idx % (logits.shape[2] * logits.shape[3])
                cy, cx = (rest // logits.shape[3]).float() * 8, (rest % logits.shape[3]).float() * 8
                inst = Instances((h, w), pred_boxes=Boxes(torch.stack([cx - 8, cy - 8, cx + 8, cy + 8], 1)),
                                 scores=score, pred_classes=k)
                out.append({"instances": inst})
            return out


def test_custom_meta_architecture_distils_with_a_config_only(tmp_path, demo_datasets, train_net):
    _register()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    tcfg = get_cfg()
    tcfg.merge_from_file(os.path.join(TEST_CONFIGS, "retinanet_R_18_tiny_teacher.yaml"))
    tcfg.MODEL.DEVICE = "cpu"
    DetectionCheckpointer(build_model(tcfg), str(tmp_path)).save("teacher")
    config = tmp_path / "bcd_cwd_heatmap.yaml"
    config.write_text(f"""_BASE_: ["{os.path.join(TEST_CONFIGS, 'Base-RetinaNet-Tiny.yaml')}", "{os.path.join(TEST_CONFIGS, '..', 'Base-BCD.yaml')}"]
MODEL:
  META_ARCHITECTURE: BoxCentreHeatmap
  BACKBONE:
    NAME: build_resnet_fpn_backbone
  FPN:
    OUT_CHANNELS: 32
KD:
  LOSSES: [BoundaryDistillation, ContextDistillation, ChannelWiseDistillation]
  TEACHER:
    CONFIG_FILE: {os.path.join(TEST_CONFIGS, 'retinanet_R_18_tiny_teacher.yaml')}
    WEIGHTS: {tmp_path / 'teacher.pth'}
  BCD_HFA:
    DIM: 16
  CWD:
    STUDENT_FEATURES: ["backbone[p3]"]
    TEACHER_FEATURES: ["backbone[p3]"]
DATASETS:
  TEST: ()
SOLVER:
  IMS_PER_BATCH: 2
  MAX_ITER: 2
  WARMUP_ITERS: 0
""")
    out = tmp_path / "out"
    train_net(["--config-file", str(config), "OUTPUT_DIR", str(out)])
    last = [json.loads(line) for line in open(out / "metrics.json") if line.strip()][-1]
    for k in ("loss_heatmap", "loss_kd_boundary", "loss_kd_context", "loss_kd_cwd", "kd/cwd/raw", "kd/cwd/weight"):
        assert math.isfinite(last[k]), (k, last)
    assert last["kd/cwd/raw"] > 0 and last["kd/context/raw"] > 0
    # the exported student is the custom model alone; its CWD connector (32 -> 64 channels) is not in it
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert "head.weight" in state and not any(k.startswith("kd_modules") for k in state)
    full = torch.load(out / "model_0000001.pth", weights_only=True)["model"]
    assert full["kd_modules.cwd.connectors.0.proj.0.weight"].shape[:2] == (64, 32)
