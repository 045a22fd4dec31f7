#!/usr/bin/env python
"""COCO-Stuff 10K (v1.1): ``annotations/<id>.mat`` -> ``annotations_detectron2/{train,test}/<id>.png``.

The .mat field ``S`` holds 0 (unlabeled) and the COCO-Stuff ids 1..182, of which 11 thing ids
are unused; the 171 used ids are renumbered 0..170 in id order (the order of
``COCO_STUFF_171_CLASSES`` in ``bcd/data/datasets/builtin_sem_seg.py``), everything else 255.

    python datasets/prepare_coco_stuff_10k.py [--root $BCD_DATASETS/coco_stuff_10k]

Expects ``images/*.jpg``, ``annotations/*.mat``, ``imageLists/{train,test}.txt`` (the release
layout). Reading .mat files needs scipy (``pip install scipy``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

import numpy as np
from PIL import Image

UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)


def coco_stuff_lut() -> np.ndarray:
    """256-entry table: COCO-Stuff id (1..182) -> contiguous 0..170; unused ids and 0 -> 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    used = [i for i in range(1, 183) if i not in UNUSED_IDS]
    assert len(used) == 171
    lut[used] = np.arange(171, dtype=np.uint8)
    return lut


def main(argv: List[str] | None = None) -> None:
    default_root = os.path.join(os.environ.get("BCD_DATASETS", "datasets"), "coco_stuff_10k")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default_root)
    args = parser.parse_args(argv)
    try:
        from scipy.io import loadmat
    except ImportError:
        sys.exit("prepare_coco_stuff_10k.py reads .mat files with scipy: pip install scipy")
    lut = coco_stuff_lut()
    for split in ("train", "test"):
        list_file = os.path.join(args.root, "imageLists", split + ".txt")
        if not os.path.isfile(list_file):
            sys.exit(f"'{list_file}' does not exist; unzip cocostuff-10k-v1.1.zip into {args.root}")
        with open(list_file) as f:
            ids = [line.strip() for line in f if line.strip()]
        out_dir = os.path.join(args.root, "annotations_detectron2", split)
        os.makedirs(out_dir, exist_ok=True)
        for stem in ids:
            mat = os.path.join(args.root, "annotations", stem + ".mat")
            try:
                s = loadmat(mat)["S"].astype(np.int64)
            except Exception as e:
                sys.exit(f"Cannot read '{mat}': {type(e).__name__}: {e}")
            Image.fromarray(lut[s]).save(os.path.join(out_dir, stem + ".png"))
        print(f"{split}: {len(ids)} labels -> {out_dir}")


if __name__ == "__main__":
    main()
