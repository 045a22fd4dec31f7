#!/usr/bin/env python
"""Make another Detectron2 fixture the way ``../shared/fixtures/detectron2/`` was made (other
photos, another seed), for ``BCD_D2_FIXTURES=<out> pytest tests/detection/test_detectron2_fixtures.py``.

    python tests/detection/make_d2_fixture.py cascade_mask_rcnn_r18_fpn 14 hubble_deep_field,immunohistochemistry OUT
    python tests/detection/make_d2_fixture.py retinanet_r18_fpn 14 hubble_deep_field,immunohistochemistry OUT

Needs Detectron2 and scikit-image (not test dependencies: run it by hand). The model is the one
of the shared fixture's ``config.yaml`` (``KIND``), built and initialised by Detectron2 with
``torch.manual_seed(SEED)``, its FrozenBN statistics randomised (mean ~ N(0, 0.1), variance ~
U(0.5, 2)), stored in fp16 and run in fp32 from the rounded values on scikit-image's photos
``PHOTOS`` (longest side 512 px, BGR uint8). It writes ``OUT/KIND/{config.yaml, model_final.pth,
reference.pt}`` with the features, proposals (Cascade) and detections (masks as RLE) of the
shared fixture; not the first-step training losses, so deselect that test (``-k "not
first_step"``).
"""
import os
import shutil
import sys

import numpy as np
import torch


def main(kind: str, seed: int, photos: str, out_root: str) -> None:
    import skimage.data
    import skimage.transform
    from detectron2.config import get_cfg
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model
    from pycocotools import mask as mask_util

    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(here))), "shared", "fixtures",
                       "detectron2", kind, "config.yaml")
    cfg = get_cfg()
    cfg.set_new_allowed(True)
    cfg.merge_from_file(src)
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    out = os.path.join(out_root, kind)
    os.makedirs(out, exist_ok=True)
    torch.save({"model": sd}, os.path.join(out, "model_final.pth"))
    shutil.copy(src, os.path.join(out, "config.yaml"))
    images = []
    for name in photos.split(","):
        im = getattr(skimage.data, name)()
        im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
        h, w = im.shape[:2]
        s = 512 / max(h, w)
        im = skimage.transform.resize(im, (round(h * s), round(w * s)), preserve_range=True, anti_aliasing=True)
        im = im.round().clip(0, 255).astype(np.uint8)
        images.append(torch.from_numpy(im[..., ::-1].copy()).permute(2, 0, 1).contiguous())  # BGR
    captured = {}
    model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("features", o))
    if kind.startswith("cascade"):
        model.proposal_generator.register_forward_hook(lambda m, i, o: captured.__setitem__("proposals", o[0]))
    with torch.no_grad():
        outs = model([{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images])
    ref = {"images_bgr": images, "features_fp16": {k: v.half() for k, v in captured["features"].items()},
           "instances": []}
    if "proposals" in captured:
        ref["proposals"] = [{"boxes": p.proposal_boxes.tensor, "objectness_logits": p.objectness_logits}
                            for p in captured["proposals"]]
    for o in outs:
        inst = o["instances"]
        d = {"boxes": inst.pred_boxes.tensor, "scores": inst.scores, "classes": inst.pred_classes}
        if inst.has("pred_masks"):
            d["masks_rle"] = [mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in inst.pred_masks]
        ref["instances"].append(d)
    torch.save(ref, os.path.join(out, "reference.pt"))
    print(out, "detections", [len(o["instances"]) for o in outs])


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
