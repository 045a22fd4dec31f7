#!/usr/bin/env python
"""Pascal VOC 2012 + SBD: the 10,582-image "train_aug" set used by the segmentation papers.

* ``SegmentationClassAug/<id>.png``: index PNGs (0..20, 255 = boundary / ignore) for the union of
  the VOC 2012 ``SegmentationClass`` palette PNGs and SBD's ``dataset/cls/<id>.mat`` (field
  ``GTcls.Segmentation``; SBD has no ignore band). VOC's own label wins when both exist.
* ``ImageSets/Segmentation/train_aug.txt``: (SBD train + SBD val + VOC train) minus VOC val.

    python datasets/prepare_voc_sbd.py --sbd /path/to/benchmark_RELEASE/dataset \
        [--voc $BCD_DATASETS/VOCdevkit/VOC2012]

Reading the .mat files needs scipy (``pip install scipy``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Set

import numpy as np
from PIL import Image


def _read_ids(path: str) -> List[str]:
    if not os.path.isfile(path):
        sys.exit(f"List file '{path}' does not exist")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def sbd_mat_to_label(mat_file: str) -> np.ndarray:
    """``H×W`` uint8 class indices of one SBD ``cls/<id>.mat`` file."""
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("prepare_voc_sbd.py reads SBD's .mat files with scipy: pip install scipy") from e
    try:
        return loadmat(mat_file)["GTcls"][0]["Segmentation"][0].astype(np.uint8)
    except Exception as e:
        raise RuntimeError(f"Cannot read SBD label '{mat_file}': {type(e).__name__}: {e}") from e


def main(argv: List[str] | None = None) -> None:
    default_voc = os.path.join(os.environ.get("BCD_DATASETS", "datasets"), "VOCdevkit", "VOC2012")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc", default=default_voc, help="VOC2012 folder")
    parser.add_argument("--sbd", required=True, help="SBD 'dataset' folder (with cls/, train.txt, val.txt)")
    args = parser.parse_args(argv)
    seg = os.path.join(args.voc, "ImageSets", "Segmentation")
    voc_train, voc_val = _read_ids(os.path.join(seg, "train.txt")), _read_ids(os.path.join(seg, "val.txt"))
    sbd_ids = _read_ids(os.path.join(args.sbd, "train.txt")) + _read_ids(os.path.join(args.sbd, "val.txt"))
    val: Set[str] = set(voc_val)
    train_aug = sorted((set(sbd_ids) | set(voc_train)) - val)
    out_dir = os.path.join(args.voc, "SegmentationClassAug")
    os.makedirs(out_dir, exist_ok=True)
    voc_labels = os.path.join(args.voc, "SegmentationClass")
    for i, stem in enumerate(sorted(set(train_aug) | val)):
        dst = os.path.join(out_dir, stem + ".png")
        voc_png = os.path.join(voc_labels, stem + ".png")
        if os.path.isfile(voc_png):
            # VOC palette PNG: the palette indices are the labels; copy as a grayscale PNG.
            Image.fromarray(np.asarray(Image.open(voc_png))).save(dst)
        else:
            Image.fromarray(sbd_mat_to_label(os.path.join(args.sbd, "cls", stem + ".mat"))).save(dst)
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1} labels written")
    with open(os.path.join(seg, "train_aug.txt"), "w") as f:
        f.write("\n".join(train_aug) + "\n")
    print(f"train_aug: {len(train_aug)} images (expected 10582); labels in {out_dir}")


if __name__ == "__main__":
    main()
