#!/usr/bin/env python
"""ADE20K (SceneParsing, ADEChallengeData2016): shift the 150-class labels to 0..149, 255 = "other".

The released annotations use 0 for "other objects" and 1..150 for the classes; the training
code wants the classes at 0..149 and the ignore value 255 (as Detectron2 and mmsegmentation's
``reduce_zero_label``). Writes ``annotations_detectron2/{training,validation}/*.png``.

    python datasets/prepare_ade20k.py [--root $BCD_DATASETS/ADEChallengeData2016]
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import List

import numpy as np
from PIL import Image


def convert_ade20k_label(label: np.ndarray) -> np.ndarray:
    """``H×W`` uint8 0..150 -> 0..149 with 0 ("other") -> 255."""
    out = label.astype(np.int32) - 1
    out[label == 0] = 255
    return out.astype(np.uint8)


def main(argv: List[str] | None = None) -> None:
    default_root = os.path.join(os.environ.get("BCD_DATASETS", "datasets"), "ADEChallengeData2016")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default_root)
    args = parser.parse_args(argv)
    for split in ("training", "validation"):
        src_dir = os.path.join(args.root, "annotations", split)
        if not os.path.isdir(src_dir):
            sys.exit(f"'{src_dir}' does not exist; unzip ADEChallengeData2016.zip into {os.path.dirname(args.root)}")
        dst_dir = os.path.join(args.root, "annotations_detectron2", split)
        os.makedirs(dst_dir, exist_ok=True)
        files = sorted(glob.glob(os.path.join(src_dir, "*.png")))
        for f in files:
            Image.fromarray(convert_ade20k_label(np.asarray(Image.open(f)))).save(
                os.path.join(dst_dir, os.path.basename(f)))
        print(f"{split}: {len(files)} labels -> {dst_dir}")


if __name__ == "__main__":
    main()
