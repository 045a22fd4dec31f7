"""Detectron2's Semantic FPN (SemanticSegmentor, which has no preprocess_image) under the project's
Distiller: the BCD + CWD config of projects/bcd/configs/Misc, shrunk to a ResNet-18 with 32-channel
FPN and 5 classes, on a random batch with labels.

Asserted against values computed here from the models themselves: the ImageBatch pads images as
the model does and pads labels with the ignore value; the teacher's published ``logits`` are its
predictor's output (``KD.D2.TEACHER_LOGITS``), so the pseudo labels of BCD's teacher boundary head
are their argmax; the KD entries are finite and the CWD mask leaves out ignored and padded cells.
"""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("detectron2", reason="Detectron2 is not installed (projects/bcd/README.md)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "projects", "bcd", "configs", "Misc", "bcd_semantic_R_101_to_R_50_FPN_1x.yaml")
TINY = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "MODEL.WEIGHTS", "",
        "MODEL.DEVICE", "cpu"]


def test_semantic_fpn_distillation(tmp_path):
    import bcd_d2
    import torch.nn.functional as F
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.events import EventStorage

    cfg = bcd_d2.get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + ["KD.LOSSES", "['BoundaryDistillation', 'ContextDistillation', 'ChannelWiseDistillation']",
                                "KD.TEACHER.OPTS", str(TINY), "KD.BCD_HFA.DIM", "8", "KD.BOUNDARY.TEACHER_HEAD_FIT_ITERS", "5"])
    torch.manual_seed(0)
    DetectionCheckpointer(bcd_d2.build_student(bcd_d2.teacher_config(cfg)), str(tmp_path)).save("teacher")
    cfg.KD.TEACHER.WEIGHTS = str(tmp_path / "teacher.pth")
    model = bcd_d2.build_model(cfg)

    g = torch.Generator().manual_seed(0)
    inputs = []
    for h, w in ((96, 128), (80, 112)):
        sem = torch.randint(0, 5, (h, w), generator=g)
        sem[:10] = 255  # ignored rows
        inputs.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                       "sem_seg": sem, "height": h, "width": w})
    seen = {}
    inner = model._kd_losses

    def capture(s, t, ctx, it):
        seen["ctx"] = ctx
        return inner(s, t, ctx, it)

    model._kd_losses = capture
    model.train()
    model.set_iteration(1)  # the teacher boundary head is being fitted on pseudo labels
    with EventStorage(1):
        out = model(inputs)
    ctx = seen["ctx"]

    # images padded to the backbone's size divisibility (32), labels with the ignore value
    batch = ctx.student_batch
    assert tuple(batch.tensor.shape) == (2, 3, 96, 128) and batch.image_sizes == [(96, 128), (80, 112)]
    assert torch.equal(batch.sem_seg[1, :80, :112], inputs[1]["sem_seg"])
    assert (batch.sem_seg[1, 80:] == 255).all() and (batch.sem_seg[1, :, 112:] == 255).all()

    # the teacher's logits: its predictor's output on the normalised, padded batch
    teacher = model.teacher
    with torch.no_grad():
        expected = teacher.sem_seg_head.layers(teacher.backbone(ctx.teacher_batch.tensor))
    logits = ctx.teacher_outputs["logits"]
    assert logits.shape == (2, 5, 24, 32)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    labels = ctx.pseudo_labels((12, 16))
    assert torch.equal(labels, F.interpolate(expected, size=(12, 16), mode="bilinear", align_corners=False).argmax(1))

    # CWD's mask on the predictor's grid: not padding, label not ignored (nearest-downsampled)
    ctx.mask = True
    valid = ctx.valid_mask((24, 32))
    lab = F.interpolate(batch.sem_seg[:, None].float(), size=(24, 32), mode="nearest")[:, 0]
    assert torch.equal(valid[0], lab[0] != 255) and not valid[1, 20:].any() and not valid[1, :, 28:].any()

    for k in ("loss_sem_seg", "loss_kd_boundary", "loss_kd_boundary_teacher_head", "loss_kd_context", "loss_kd_cwd"):
        assert torch.isfinite(out[k]), k
    assert float(out["loss_kd_boundary_teacher_head"]) > 0 and float(out["loss_kd_cwd"]) > 0
