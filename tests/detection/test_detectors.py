"""RetinaNet and GFL on tiny inputs: shapes, losses, assignment and box maths against brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bcd.modeling.meta_arch import build_model
from bcd.modeling.meta_arch.gfl import (
    atss_assign,
    bbox2distance,
    distance2bbox,
    distribution_focal_loss,
    integral,
    quality_focal_loss,
)
from bcd.structures import Instances


def _inputs(sizes=((64, 64), (64, 96)), boxes=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, (h, w) in enumerate(sizes):
        inst = Instances((h, w))
        b = boxes[k] if boxes is not None else [[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]
        inst.gt_boxes = torch.tensor(b, dtype=torch.float32).reshape(-1, 4)
        inst.gt_classes = torch.arange(len(b), dtype=torch.int64) % 3
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                    "instances": inst, "height": 2 * h, "width": 3 * w, "image_id": k})
    return out


@pytest.mark.parametrize("arch, keys", [("RetinaNet", {"loss_cls", "loss_box_reg"}),
                                        ("GFL", {"loss_qfl", "loss_dfl", "loss_giou"})])
def test_forward_backward_and_eval(tiny_cfg, arch, keys):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(arch))
    model.train()
    inputs = _inputs()
    losses = model(inputs)
    assert set(losses) == keys
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.bottom_up.res3[0].conv1.weight.grad.abs().sum() > 0
    # raw outputs: 5 levels at strides 8..128 of the 64x96 padded batch
    batch = model.preprocess(inputs)
    assert tuple(batch.tensor.shape) == (2, 3, 64, 96) and batch.image_sizes == [(64, 64), (64, 96)]
    out = model.extract(batch)
    assert out["strides"] == [8, 16, 32, 64, 128]
    assert [tuple(f.shape[-2:]) for f in out["features"].values()] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    A = 9 if arch == "RetinaNet" else 1
    for cls, anchors in zip(out["cls_logits"], out["anchors"]):
        assert cls.shape[1] == A * 3 and anchors.shape == (cls.shape[2] * cls.shape[3] * A, 4)
    # empty ground truth is fine in training
    empty = _inputs(boxes=[[], []])
    assert all(torch.isfinite(v) for v in model(empty).values())
    model.eval()
    with torch.no_grad():
        res = model(inputs)
    assert len(res) == 2 and res[1]["instances"].image_size == (128, 288)


def test_eval_boxes_rescaled_to_original_size(tiny_cfg):
    model = build_model(tiny_cfg("RetinaNet")).eval()

    def fixed(cls, reg, anchors, stride):  # one known box per level
        return (torch.tensor([[10.0, 20.0, 30.0, 40.0]]) + stride, torch.tensor([0.5 + stride / 1000]),
                torch.tensor([stride % 3]))

    model.predict_level = fixed
    with torch.no_grad():
        inst = model(_inputs(sizes=((64, 96),)))[0]["instances"]
    # height 128 / 64 = 2, width 288 / 96 = 3. Boxes are clipped to the 64x96 input and empty ones
    # dropped (as Detectron2 does): the p7 (stride 128) and p6 (stride 64) boxes clip to nothing,
    # so the top box is p5's [42, 52, 62, 72] clipped to [42, 52, 62, 64].
    assert inst.image_size == (128, 288)
    assert len(inst) == 3 and not ((inst.scores - 0.628).abs() < 1e-6).any()
    top = inst.pred_boxes[inst.scores.argmax()]
    torch.testing.assert_close(inst.scores.max(), torch.tensor(0.532))
    torch.testing.assert_close(top, torch.tensor([42.0 * 3, 52 * 2, 62 * 3, 64 * 2]))
    k = (inst.scores - 0.508).abs().argmin()
    torch.testing.assert_close(inst.pred_boxes[k], torch.tensor([18.0 * 3, 28 * 2, 38 * 3, 48 * 2]))


def test_retinanet_anchor_labels_brute_force(tiny_cfg):
    model = build_model(tiny_cfg("RetinaNet"))
    feats = [torch.zeros(1, 1, h, w) for h, w in [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]]
    anchors = torch.cat(model.anchors(feats))
    # anchor centres sit on the stride grid (torchvision convention, offset 0)
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert set(ctr[: 8 * 8 * 9, 0].tolist()) == {8.0 * i for i in range(8)}
    inst = Instances((64, 64))
    inst.gt_boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0], [0, 0, 3, 3]])
    inst.gt_classes = torch.tensor([2, 0, 1])
    labels, boxes = model.label_anchors(anchors, [inst])
    # brute force: IoU in numpy, thresholds 0.4 / 0.5, plus each GT's best anchors (low quality)
    a, g = anchors.double().numpy(), inst.gt_boxes.double().numpy()
    iou = np.zeros((len(g), len(a)))
    for i in range(len(g)):
        for j in range(len(a)):
            ix = max(0, min(g[i, 2], a[j, 2]) - max(g[i, 0], a[j, 0]))
            iy = max(0, min(g[i, 3], a[j, 3]) - max(g[i, 1], a[j, 1]))
            inter = ix * iy
            union = (g[i, 2] - g[i, 0]) * (g[i, 3] - g[i, 1]) + (a[j, 2] - a[j, 0]) * (a[j, 3] - a[j, 1]) - inter
            iou[i, j] = inter / union
    best_gt, best_iou = iou.argmax(0), iou.max(0)
    expected = np.where(best_iou >= 0.5, inst.gt_classes.numpy()[best_gt], np.where(best_iou < 0.4, 3, -1))
    for i in range(len(g)):
        for j in np.nonzero(np.isclose(iou[i], iou[i].max()))[0]:
            expected[j] = inst.gt_classes[best_gt[j]].item()
    np.testing.assert_array_equal(labels[0].numpy(), expected)
    pos = expected >= 0
    pos &= expected < 3
    np.testing.assert_allclose(boxes[0].numpy()[pos], g[best_gt[pos]], rtol=0, atol=1e-6)


def test_retinanet_losses_brute_force(tiny_cfg):
    torch.manual_seed(1)
    model = build_model(tiny_cfg("RetinaNet")).train()
    inputs = _inputs()
    batch = model.preprocess(inputs)
    out = model.extract(batch)
    losses = model.losses(batch, out)
    anchors = torch.cat(out["anchors"])
    labels, gt_boxes = model.label_anchors(anchors, batch.instances)
    K = 3
    cls = torch.cat([x.permute(0, 2, 3, 1).reshape(2, -1, K) for x in out["cls_logits"]], 1)
    reg = torch.cat([x.permute(0, 2, 3, 1).reshape(2, -1, 4) for x in out["bbox_reg"]], 1)
    pos = (labels >= 0) & (labels < K)
    n = pos.sum().item()
    focal = 0.0
    for b in range(2):
        for m in range(labels.shape[1]):
            if labels[b, m] < 0:
                continue
            for k in range(K):
                y = 1.0 if labels[b, m] == k else 0.0
                p = torch.sigmoid(cls[b, m, k]).item()
                pt = p if y else 1 - p
                alpha = 0.25 if y else 0.75
                focal += -alpha * (1 - pt) ** 2 * math.log(max(pt, 1e-30))
    assert losses["loss_cls"].item() == pytest.approx(focal / n, rel=1e-4)
    a = anchors.expand(2, -1, -1)[pos].double()
    g = gt_boxes[pos].double()
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    ax, ay = a[:, 0] + aw / 2, a[:, 1] + ah / 2
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    gx, gy = g[:, 0] + gw / 2, g[:, 1] + gh / 2
    deltas = torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], 1)
    l1 = (reg[pos].double() - deltas).abs().sum().item()
    assert losses["loss_box_reg"].item() == pytest.approx(l1 / n, rel=1e-4)


def _atss_reference(levels, gt, classes, K, topk):
    """Loop-by-loop ATSS (numpy) for comparison."""
    a = np.concatenate([lv.numpy() for lv in levels]).astype(np.float64)
    g = gt.numpy().astype(np.float64)
    M = len(a)
    labels = np.full(M, K)
    best = np.full(M, -1.0)
    assigned = np.full(M, -1)
    ac = (a[:, :2] + a[:, 2:]) / 2

    def iou(b1, b2):
        ix = max(0, min(b1[2], b2[2]) - max(b1[0], b2[0]))
        iy = max(0, min(b1[3], b2[3]) - max(b1[1], b2[1]))
        inter = ix * iy
        return inter / ((b1[2] - b1[0]) * (b1[3] - b1[1]) + (b2[2] - b2[0]) * (b2[3] - b2[1]) - inter)

    for j, box in enumerate(g):
        gc = (box[:2] + box[2:]) / 2
        cands, start = [], 0
        for lv in levels:
            n = len(lv)
            d = np.linalg.norm(ac[start:start + n] - gc, axis=1)
            cands += list(start + np.argsort(d, kind="stable")[: min(topk, n)])
            start += n
        ious = np.array([iou(a[c], box) for c in cands])
        thr = ious.mean() + ious.std(ddof=1)
        for c, v in zip(cands, ious):
            x, y = ac[c]
            inside = min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 0.01
            if v >= thr and inside and v > best[c]:
                best[c], assigned[c] = v, j
    labels[assigned >= 0] = classes[assigned[assigned >= 0]]
    return labels, assigned


def test_atss_matches_loop_reference(tiny_cfg):
    model = build_model(tiny_cfg("GFL"))
    feats = [torch.zeros(1, 1, h, w) for h, w in [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]]
    levels = model.anchors(feats)
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 90, size=(6, 2))
    wh = rng.uniform(6, 60, size=(6, 2))
    gt = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, 127)], 1), dtype=torch.float32)
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    labels, boxes, ious = atss_assign(levels, gt, classes, 3, topk=9)
    ref_labels, ref_assigned = _atss_reference(levels, gt, classes.numpy(), 3, 9)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    pos = ref_assigned >= 0
    assert pos.sum() >= 6  # every box got positives
    np.testing.assert_allclose(boxes.numpy()[pos], gt.numpy()[ref_assigned[pos]])
    assert (ious[torch.from_numpy(pos)] > 0).all() and (ious[torch.from_numpy(~pos)] == 0).all()


def test_qfl_dfl_integral_exact():
    logits = torch.tensor([[0.3, -1.0, 2.0], [-0.5, 0.1, 0.0]])
    labels = torch.tensor([2, 3])  # second row: negative
    scores = torch.tensor([0.7, 0.0])
    loss = quality_focal_loss(logits, labels, scores, beta=2.0)
    s = torch.sigmoid(logits)
    bce = lambda x, y: -(y * math.log(x) + (1 - y) * math.log(1 - x))  # noqa: E731
    exp0 = sum(bce(s[0, k].item(), 0.0) * s[0, k].item() ** 2 for k in range(2)) + bce(
        s[0, 2].item(), 0.7) * abs(0.7 - s[0, 2].item()) ** 2
    exp1 = sum(bce(s[1, k].item(), 0.0) * s[1, k].item() ** 2 for k in range(3))
    torch.testing.assert_close(loss, torch.tensor([exp0, exp1]), rtol=1e-5, atol=1e-7)
    # DFL: target 2.3 -> 0.7·CE(bin 2) + 0.3·CE(bin 3); integer target = plain CE
    d = torch.randn(2, 17)
    t = torch.tensor([2.3, 5.0])
    logp = F.log_softmax(d, -1)
    ref = torch.stack([-(0.7 * logp[0, 2] + 0.3 * logp[0, 3]), -logp[1, 5]])
    torch.testing.assert_close(distribution_focal_loss(d, t), ref, rtol=1e-5, atol=1e-6)
    # DFL's optimum puts mass (0.7, 0.3) on bins 2, 3 -> integral 2.3
    opt = torch.full((1, 17), -1e4)
    opt[0, 2], opt[0, 3] = math.log(0.7), math.log(0.3)
    assert integral(opt).item() == pytest.approx(2.3, abs=1e-5)
    # distance <-> box round trip, with the clamp below reg_max
    pts = torch.tensor([[10.0, 10.0], [5.0, 7.0]])
    boxes = torch.tensor([[4.0, 3.0, 20.0, 12.0], [0.0, 0.0, 40.0, 9.0]])
    dist = bbox2distance(pts, boxes, 16)
    torch.testing.assert_close(dist, torch.tensor([[6.0, 7.0, 10.0, 2.0], [5.0, 7.0, 15.99, 2.0]]))
    torch.testing.assert_close(distance2bbox(pts[:1], dist[:1]), boxes[:1])


def test_gfl_decoding_uses_integral_times_stride(tiny_cfg):
    model = build_model(tiny_cfg("GFL")).eval()
    n1 = model.reg_max + 1
    cls = torch.full((1, 3, 2, 2), -10.0)
    cls[0, 1, 1, 0] = 5.0  # one confident location: y = 1, x = 0
    dist = torch.full((1, 4 * n1, 2, 2), -1e4)
    for side, bin_ in enumerate([1, 2, 3, 0]):
        dist[0, side * n1 + bin_] = 10.0
    anchors = torch.tensor([[0.0, 0, 0, 0], [16, 0, 16, 0], [0, 16, 0, 16], [16, 16, 16, 16]])
    boxes, scores, classes = model.predict_level(cls, dist, anchors, 16)
    assert classes.tolist() == [1] and scores.item() == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    torch.testing.assert_close(boxes, torch.tensor([[0.0 - 16, 16 - 32, 0 + 48, 16 + 0]]))


def test_gfl_trains_on_a_1x1_top_level(tiny_cfg):
    """Narrow heads (32 channels) on 64×64 inputs: P7 is 1×1; GN keeps ≥ 2 channels per group."""
    model = build_model(tiny_cfg("GFL")).train()
    gn = [m for m in model.head.cls_subnet if isinstance(m, torch.nn.GroupNorm)][0]
    assert gn.num_groups == 16 and gn.num_channels == 32
    losses = model(_inputs(sizes=((64, 64), (64, 64))))
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("config", ["configs/coco/retinanet_r18.yaml", "configs/coco/gfl_r18.yaml"])
def test_coco_configs_build_and_run(config):
    import os

    from bcd.config import get_cfg

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(repo, config))
    assert cfg.MODEL.BACKBONE.WEIGHTS == "torchvision://resnet18"  # ImageNet weights named
    cfg.MODEL.BACKBONE.WEIGHTS = ""  # not shipped: random initialisation for this check
    model = build_model(cfg)
    shapes = model.backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"] and shapes["p7"].stride == 128
    assert model.num_classes == 80 and model.size_divisibility == 32
    model.train()
    losses = model(_inputs(sizes=((96, 128),)))
    assert all(torch.isfinite(v) for v in losses.values())
