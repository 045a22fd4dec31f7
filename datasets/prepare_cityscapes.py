#!/usr/bin/env python
"""Create Cityscapes ``*_gtFine_labelTrainIds.png`` (19 train classes, 255 = ignore) from the
``*_gtFine_polygons.json`` files, with cityscapesscripts' own ``json2labelImg`` (what its
``createTrainIdLabelImgs`` does, restricted to gtFine, in parallel, skipping done files).

    python datasets/prepare_cityscapes.py [--root $BCD_DATASETS/cityscapes] [--workers 8]
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from multiprocessing import Pool
from typing import List


def _convert(json_file: str) -> str:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    dst = json_file.replace("_polygons.json", "_labelTrainIds.png")
    try:
        json2labelImg(json_file, dst, "trainIds")
    except Exception as e:  # name the file, the library does not
        raise RuntimeError(f"Cannot convert '{json_file}': {type(e).__name__}: {e}") from e
    return dst


def find_polygon_files(root: str, overwrite: bool = False) -> List[str]:
    """``gtFine/*/*/*_gtFine_polygons.json`` under ``root`` still lacking a labelTrainIds PNG."""
    files = sorted(glob.glob(os.path.join(root, "gtFine", "*", "*", "*_gtFine_polygons.json")))
    if not overwrite:
        files = [f for f in files if not os.path.isfile(f.replace("_polygons.json", "_labelTrainIds.png"))]
    return files


def main(argv: List[str] | None = None) -> None:
    default_root = os.path.join(os.environ.get("BCD_DATASETS", "datasets"), "cityscapes")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default_root, help=f"Cityscapes folder (default {default_root})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.root, "gtFine")):
        sys.exit(f"'{os.path.join(args.root, 'gtFine')}' does not exist; download gtFine_trainvaltest.zip "
                 f"and leftImg8bit_trainvaltest.zip from cityscapes-dataset.com and unzip them into {args.root}")
    files = find_polygon_files(args.root, args.overwrite)
    print(f"Converting {len(files)} annotation files to labelTrainIds")
    if args.workers <= 1:
        results = map(_convert, files)
    else:
        pool = Pool(args.workers)
        results = pool.imap_unordered(_convert, files, chunksize=16)
    for i, _ in enumerate(results, 1):
        if i % 500 == 0 or i == len(files):
            print(f"  {i}/{len(files)}")
    if args.workers > 1:
        pool.close()
        pool.join()


if __name__ == "__main__":
    main()
