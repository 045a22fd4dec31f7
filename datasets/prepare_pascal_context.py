#!/usr/bin/env python
"""Pascal-Context, 59 classes: full 459-class ``trainval/<id>.mat`` -> ``SegmentationClassContext59/<id>.png``.

Each .mat (the "trainval.tar.gz" release of Mottaghi et al.) holds ``LabelMap`` with indices
into ``labels.txt`` (``"<index>: <name>"``, 459 classes). The 59 most frequent classes
(``PASCAL_CONTEXT_59_CLASSES``) become 0..58 and everything else, including "background",
255 (the 59-class protocol of the distillation papers, mmsegmentation's ``reduce_zero_label``).
The split lists (4,998 train / 5,105 val) go to ``ImageSets/SegmentationContext/{train,val}.txt``:
give them with ``--train-list`` / ``--val-list`` (e.g. from the Detail API's
``trainval_merged.json``, whose images carry a ``phase``: pass it with ``--detail-json``).

    python datasets/prepare_pascal_context.py --context /path/to/trainval --labels /path/to/labels.txt \
        --detail-json /path/to/trainval_merged.json [--voc $BCD_DATASETS/VOCdevkit/VOC2010]

Reading .mat files needs scipy (``pip install scipy``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Dict, List

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bcd.data.datasets.builtin_sem_seg import PASCAL_CONTEXT_59_CLASSES  # noqa: E402


def context59_lut(labels_txt: str) -> np.ndarray:
    """Table: full Pascal-Context index (0..459) -> 0..58 for the 59 classes, 255 otherwise."""
    names: Dict[str, int] = {}
    with open(labels_txt) as f:
        for line in f:
            if ":" in line:
                idx, name = line.split(":", 1)
                names[name.strip()] = int(idx)
    missing = [c for c in PASCAL_CONTEXT_59_CLASSES if c not in names]
    if missing:
        sys.exit(f"'{labels_txt}' lacks the classes {missing}")
    lut = np.full(max(names.values()) + 1, 255, dtype=np.uint8)
    for i, c in enumerate(PASCAL_CONTEXT_59_CLASSES):
        lut[names[c]] = i
    return lut


def main(argv: List[str] | None = None) -> None:
    default_voc = os.path.join(os.environ.get("BCD_DATASETS", "datasets"), "VOCdevkit", "VOC2010")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc", default=default_voc, help="VOC2010 folder (with JPEGImages/)")
    parser.add_argument("--context", required=True, help="folder of the <id>.mat files")
    parser.add_argument("--labels", required=True, help="labels.txt of the 459 classes")
    parser.add_argument("--detail-json", help="Detail API trainval_merged.json (gives the splits)")
    parser.add_argument("--train-list", help="train ids, one a line (instead of --detail-json)")
    parser.add_argument("--val-list", help="val ids, one a line (instead of --detail-json)")
    args = parser.parse_args(argv)
    try:
        from scipy.io import loadmat
    except ImportError:
        sys.exit("prepare_pascal_context.py reads .mat files with scipy: pip install scipy")
    split_dir = os.path.join(args.voc, "ImageSets", "SegmentationContext")
    os.makedirs(split_dir, exist_ok=True)
    if args.detail_json:
        with open(args.detail_json) as f:
            images = json.load(f)["images"]
        for split in ("train", "val"):
            ids = sorted(os.path.splitext(im["file_name"])[0] for im in images if im.get("phase") == split)
            with open(os.path.join(split_dir, split + ".txt"), "w") as f:
                f.write("\n".join(ids) + "\n")
    elif args.train_list and args.val_list:
        shutil.copy(args.train_list, os.path.join(split_dir, "train.txt"))
        shutil.copy(args.val_list, os.path.join(split_dir, "val.txt"))
    else:
        sys.exit("Give the splits with --detail-json or with --train-list and --val-list")
    lut = context59_lut(args.labels)
    out_dir = os.path.join(args.voc, "SegmentationClassContext59")
    os.makedirs(out_dir, exist_ok=True)
    for split in ("train", "val"):
        with open(os.path.join(split_dir, split + ".txt")) as f:
            ids = [line.strip() for line in f if line.strip()]
        for stem in ids:
            mat = os.path.join(args.context, stem + ".mat")
            try:
                label_map = loadmat(mat)["LabelMap"].astype(np.int64)
            except Exception as e:
                sys.exit(f"Cannot read '{mat}': {type(e).__name__}: {e}")
            Image.fromarray(lut[label_map]).save(os.path.join(out_dir, stem + ".png"))
        print(f"{split}: {len(ids)} labels -> {out_dir}")


if __name__ == "__main__":
    main()
