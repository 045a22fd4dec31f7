"""Builtin semantic-segmentation datasets under ``get_datasets_root()`` (``$BCD_DATASETS``).

Registering is lazy: nothing is read at import; a missing folder is an error naming it (and
pointing to ``datasets/README.md``) only when the dataset is loaded with ``DatasetCatalog.get``.
The folder layouts are described, and the conversions done, in ``datasets/README.md`` and the
``datasets/prepare_*.py`` scripts.

| name                                  | layout under the datasets root                          |
|---------------------------------------|---------------------------------------------------------|
| ``cityscapes_fine_sem_seg_{train,val,test}`` | ``cityscapes/leftImg8bit/<split>``, ``cityscapes/gtFine/<split>`` (``labelTrainIds``) |
| ``voc_2012_sem_seg_{train,val}``      | ``VOCdevkit/VOC2012/{JPEGImages,SegmentationClass}``     |
| ``voc_2012_sem_seg_train_aug``        | ``VOCdevkit/VOC2012/SegmentationClassAug``, ``train_aug.txt`` (10582 images, SBD) |
| ``ade20k_sem_seg_{train,val}``        | ``ADEChallengeData2016/{images,annotations_detectron2}`` |
| ``coco_stuff_10k_sem_seg_{train,test}`` | ``coco_stuff_10k/{images,annotations_detectron2}``     |
| ``pascal_context_59_sem_seg_{train,val}`` | ``VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext59}`` |
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from .registry import get_datasets_root
from .sem_seg import load_sem_seg, register_sem_seg

__all__ = [
    "CITYSCAPES_CLASSES",
    "VOC_CLASSES",
    "ADE20K_150_CLASSES",
    "COCO_STUFF_171_CLASSES",
    "PASCAL_CONTEXT_59_CLASSES",
    "register_all_sem_seg",
]

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]

ADE20K_150_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
]

_COCO_THINGS = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
_COCO_STUFF = [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]
# The 171 COCO-Stuff classes in the order of their COCO ids (things 1-90, stuff 92-182, with
# the 11 unused thing ids removed): the contiguous ids written by prepare_coco_stuff_10k.py.
COCO_STUFF_171_CLASSES = _COCO_THINGS + _COCO_STUFF

PASCAL_CONTEXT_59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]


def _cityscapes_meta() -> Dict[str, Any]:
    # cityscapesscripts owns the label definitions; train ids 0..18 in order.
    from cityscapesscripts.helpers.labels import labels

    train = sorted((l for l in labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)
    return {"classes": [l.name for l in train], "colors": [list(l.color) for l in train]}


CITYSCAPES_CLASSES: List[str] = _cityscapes_meta()["classes"]


def _loader(
    image_dir: str,
    label_dir: Optional[str],
    image_ext: str,
    label_ext: str,
    list_file: Optional[str] = None,
) -> Callable[[], List[Dict[str, Any]]]:
    """A loader resolving the folders under the datasets root *when called*, so that setting
    ``$BCD_DATASETS`` after import still takes effect."""

    def _load() -> List[Dict[str, Any]]:
        root = get_datasets_root()
        return load_sem_seg(
            os.path.join(root, image_dir),
            os.path.join(root, label_dir) if label_dir is not None else None,
            image_ext=image_ext,
            label_ext=label_ext,
            list_file=os.path.join(root, list_file) if list_file else None,
        )

    return _load


def register_all_sem_seg() -> None:
    """Register every builtin semantic-segmentation dataset (lazy; see the module doc)."""
    cs = _cityscapes_meta()
    for split in ("train", "val", "test"):
        image_dir = f"cityscapes/leftImg8bit/{split}"
        gt_dir = f"cityscapes/gtFine/{split}"
        register_sem_seg(
            f"cityscapes_fine_sem_seg_{split}",
            # The test split has no public labels.
            _loader(image_dir, gt_dir if split != "test" else None, "_leftImg8bit.png",
                    "_gtFine_labelTrainIds.png"),
            classes=cs["classes"],
            colors=cs["colors"],
            ignore_label=255,
            evaluator_type="cityscapes_sem_seg",
            image_root=image_dir,
            gt_dir=gt_dir,
        )

    voc = "VOCdevkit/VOC2012"
    for name, label_dir, split in (
        ("voc_2012_sem_seg_train", "SegmentationClass", "train"),
        ("voc_2012_sem_seg_val", "SegmentationClass", "val"),
        ("voc_2012_sem_seg_train_aug", "SegmentationClassAug", "train_aug"),
    ):
        register_sem_seg(
            name,
            _loader(f"{voc}/JPEGImages", f"{voc}/{label_dir}", ".jpg", ".png",
                    f"{voc}/ImageSets/Segmentation/{split}.txt"),
            classes=VOC_CLASSES,
            ignore_label=255,
            evaluator_type="sem_seg",
            image_root=f"{voc}/JPEGImages",
            sem_seg_root=f"{voc}/{label_dir}",
        )

    for split, folder in (("train", "training"), ("val", "validation")):
        register_sem_seg(
            f"ade20k_sem_seg_{split}",
            _loader(f"ADEChallengeData2016/images/{folder}",
                    f"ADEChallengeData2016/annotations_detectron2/{folder}", ".jpg", ".png"),
            classes=ADE20K_150_CLASSES,
            ignore_label=255,
            evaluator_type="sem_seg",
            image_root=f"ADEChallengeData2016/images/{folder}",
            sem_seg_root=f"ADEChallengeData2016/annotations_detectron2/{folder}",
        )

    for split in ("train", "test"):
        register_sem_seg(
            f"coco_stuff_10k_sem_seg_{split}",
            _loader("coco_stuff_10k/images", f"coco_stuff_10k/annotations_detectron2/{split}",
                    ".jpg", ".png", f"coco_stuff_10k/imageLists/{split}.txt"),
            classes=COCO_STUFF_171_CLASSES,
            ignore_label=255,
            evaluator_type="sem_seg",
            image_root="coco_stuff_10k/images",
            sem_seg_root=f"coco_stuff_10k/annotations_detectron2/{split}",
        )

    voc10 = "VOCdevkit/VOC2010"
    for split in ("train", "val"):
        register_sem_seg(
            f"pascal_context_59_sem_seg_{split}",
            _loader(f"{voc10}/JPEGImages", f"{voc10}/SegmentationClassContext59", ".jpg", ".png",
                    f"{voc10}/ImageSets/SegmentationContext/{split}.txt"),
            classes=PASCAL_CONTEXT_59_CLASSES,
            ignore_label=255,
            evaluator_type="sem_seg",
            image_root=f"{voc10}/JPEGImages",
            sem_seg_root=f"{voc10}/SegmentationClassContext59",
        )


register_all_sem_seg()
