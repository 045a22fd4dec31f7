"""Default configuration: Detectron2-like keys plus the ``KD`` node.

Every key used anywhere in ``bcd`` is declared here with a comment; a YAML file or a command-line
override may only set keys that exist (an unknown key is an error naming the closest keys).
Sections are owned by one area each (core, semantic segmentation, detection, distillation).
"""
from .config import CfgNode as CN
from .kd_defaults import add_kd_config

_C = CN()
_C.VERSION = 1

# ---------------------------------------------------------------------------------------------
# MODEL (core)
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
# Path to a checkpoint of the whole model (student), loaded by the trainer / --eval-only.
_C.MODEL.WEIGHTS = ""
_C.MODEL.DEVICE = "cpu"  # "cuda" or "cpu"; train_net.py switches to cuda when --num-gpus > 0
# Pixel normalisation of RGB images in [0, 255] (ImageNet statistics, torchvision order).
_C.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
_C.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"  # a BACKBONE_REGISTRY entry
# Local file of ImageNet-pretrained weights with torchvision key names ("" = random init).
# Nothing is downloaded: a missing file is an error naming it.
_C.MODEL.BACKBONE.WEIGHTS = ""
_C.MODEL.BACKBONE.FREEZE_AT = 0  # freeze stem (1) and the first N-1 stages; 0 = train all
_C.MODEL.BACKBONE.NORM = "BN"  # "BN", "SyncBN", "FrozenBN", "GN"
# Name of a timm model for the "build_timm_backbone" entry (features_only=True).
_C.MODEL.BACKBONE.TIMM_NAME = ""
_C.MODEL.BACKBONE.TIMM_OUTPUT_STRIDE = 32  # 8 or 16 for timm models that support dilation

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50  # 18, 34, 50, 101, 152
_C.MODEL.RESNETS.WIDTH_MULTIPLIER = 1.0  # 0.5 gives the papers' "ResNet-18(0.5)"
_C.MODEL.RESNETS.OUTPUT_STRIDE = 32  # 8 or 16 replaces strides by dilation (DeepLab style)
_C.MODEL.RESNETS.DEEP_STEM = False  # three 3x3 convs instead of one 7x7 (PSPNet / mmseg "V1c")
_C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

_C.MODEL.MOBILENETV2 = CN()
_C.MODEL.MOBILENETV2.WIDTH_MULTIPLIER = 1.0
_C.MODEL.MOBILENETV2.OUTPUT_STRIDE = 8

_C.MODEL.EFFICIENTNET = CN()
_C.MODEL.EFFICIENTNET.VARIANT = "b1"
_C.MODEL.EFFICIENTNET.OUTPUT_STRIDE = 8

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.FPN.OUT_CHANNELS = 256
# "" (none), "P6P7" (RetinaNet / GFL: P6 from C5 or P5), "P6" (max-pool, Mask R-CNN)
_C.MODEL.FPN.TOP_BLOCK = ""
_C.MODEL.FPN.TOP_BLOCK_IN = "res5"  # input of the P6P7 block: "res5" (RetinaNet) or "p5"
_C.MODEL.FPN.NORM = ""

# ---------------------------------------------------------------------------------------------
# MODEL: semantic segmentation
# ---------------------------------------------------------------------------------------------
_C.MODEL.SEM_SEG_HEAD = CN()
_C.MODEL.SEM_SEG_HEAD.NAME = "PSPHead"  # a SEM_SEG_HEAD_REGISTRY entry
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res5"]
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 21
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
_C.MODEL.SEM_SEG_HEAD.CHANNELS = 512  # decoder width
_C.MODEL.SEM_SEG_HEAD.NORM = "BN"
_C.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0
_C.MODEL.SEM_SEG_HEAD.PSP_BINS = [1, 2, 3, 6]
_C.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [12, 24, 36]  # at output stride 8 (6/12/18 at 16)
_C.MODEL.SEM_SEG_HEAD.LOW_LEVEL_FEATURE = "res2"  # DeepLabV3+ decoder input
_C.MODEL.SEM_SEG_HEAD.LOW_LEVEL_CHANNELS = 48
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4  # Semantic FPN output stride
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 128  # Semantic FPN per-level width

_C.MODEL.AUX_HEAD = CN()
_C.MODEL.AUX_HEAD.ENABLED = False
_C.MODEL.AUX_HEAD.IN_FEATURE = "res4"
_C.MODEL.AUX_HEAD.CHANNELS = 256
_C.MODEL.AUX_HEAD.LOSS_WEIGHT = 0.4

# ---------------------------------------------------------------------------------------------
# MODEL: detection
# ---------------------------------------------------------------------------------------------
_C.MODEL.RETINANET = CN()
_C.MODEL.RETINANET.NUM_CLASSES = 80
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.RETINANET.NUM_CONVS = 4
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.SMOOTH_L1_BETA = 0.0  # 0 = L1 loss (Detectron2 default)
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = [1.0, 1.0, 1.0, 1.0]
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5

_C.MODEL.ANCHOR_GENERATOR = CN()
# Detectron2's RetinaNet sizes, exactly: x·2^(k/3), k = 0, 1, 2, for x = 32 .. 512 (rounded sizes give other
# anchors, and a converted Detectron2 model then finds other boxes)
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 40.31747359663594, 50.79683366298238], [64, 80.63494719327188, 101.59366732596476], [128, 161.26989438654377, 203.18733465192952], [256, 322.53978877308754, 406.37466930385904], [512, 645.0795775461751, 812.7493386077181]]
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]

_C.MODEL.GFL = CN()
_C.MODEL.GFL.NUM_CLASSES = 80
_C.MODEL.GFL.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.GFL.NUM_CONVS = 4
_C.MODEL.GFL.HEAD_NORM = "GN"  # norm of the head towers (mmdet GFL: GN with 32 groups)
_C.MODEL.GFL.REG_MAX = 16  # box sides are distributions over REG_MAX + 1 bins
_C.MODEL.GFL.ANCHOR_SCALE = 8  # one square anchor of size ANCHOR_SCALE * stride per location
_C.MODEL.GFL.ATSS_TOPK = 9
_C.MODEL.GFL.LOSS_QFL_WEIGHT = 1.0
_C.MODEL.GFL.LOSS_DFL_WEIGHT = 0.25
_C.MODEL.GFL.LOSS_GIOU_WEIGHT = 2.0
_C.MODEL.GFL.QFL_BETA = 2.0
_C.MODEL.GFL.SCORE_THRESH_TEST = 0.05
_C.MODEL.GFL.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.GFL.NMS_THRESH_TEST = 0.6

# ---------------------------------------------------------------------------------------------
# MODEL: instance segmentation, (Cascade) Mask R-CNN (issue 11; docs/detection.md)
# ---------------------------------------------------------------------------------------------
_C.MODEL.MASK_ON = False  # mask head on (and gt_masks from the detection mapper)
# MSRA ResNet layout (Detectron2's and Caffe2's ImageNet models): the stride of a bottleneck is
# in its first 1x1 conv; False = torchvision layout (stride in the 3x3 conv). No effect on R18/34.
_C.MODEL.RESNETS.STRIDE_IN_1X1 = False
_C.MODEL.RPN = CN()
_C.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]  # below: background, above: foreground, between: ignored
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.BBOX_REG_WEIGHTS = [1.0, 1.0, 1.0, 1.0]
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0  # 0 = L1 (Detectron2)
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000  # per level
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000  # per image (Detectron2 Base-RCNN-FPN)
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.MIN_SIZE = 0.0  # proposals with a side <= this are dropped
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
_C.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]  # stage-1 foreground IoU for sampling
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 2
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True  # Cascade: True; Mask R-CNN: False
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
# One entry per cascade stage (one entry = Mask R-CNN): foreground IoU and box-coder weights.
_C.MODEL.ROI_BOX_CASCADE_HEAD = CN()
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = [0.5, 0.6, 0.7]
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [[10.0, 10.0, 5.0, 5.0], [20.0, 20.0, 10.0, 10.0], [30.0, 30.0, 15.0, 15.0]]
_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14  # masks are predicted at twice this (28x28)
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
# Detectron2 checkpoints (bcd/modeling/d2_convert.py): the channel order the checkpoint's first
# conv was trained on ("BGR" for Detectron2's MSRA / Caffe2 models; "RGB" for torchvision-based).
# Converted weights take RGB input; set MODEL.PIXEL_MEAN / PIXEL_STD to the checkpoint's, in RGB order.
_C.MODEL.D2_INPUT_FORMAT = "BGR"
# --------------------------------------------------------------------------- end of issue 11

# ---------------------------------------------------------------------------------------------
# INPUT
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.FORMAT = "RGB"
# --- high-bit-depth images (issue 9; bcd/data/io.py, IntensityScaling) ---
# 16-bit PNG / TIFF, 32-bit integer or float images: "none" refuses them (error naming the file
# and its mode); "fixed" maps INTENSITY_RANGE [lo, hi] linearly to [0, 255] (clipped);
# "minmax" maps each image's own min..max to [0, 255]. The result stays float32 (full
# precision). 8-bit images are read unchanged whatever this says.
_C.INPUT.INTENSITY_SCALING = "none"
_C.INPUT.INTENSITY_RANGE = [0.0, 65535.0]
# --- end high-bit-depth images ---
# MAPPER_REGISTRY entry turning a dataset dict into model input ("SemSegDatasetMapper",
# "DetectionDatasetMapper", ...)
_C.INPUT.DATASET_MAPPER_NAME = "SemSegDatasetMapper"
# Semantic segmentation: random scale of the base size, crop, flip, photometric jitter.
_C.INPUT.BASE_SIZE = [512, 512]  # (h, w) the random scale multiplies; -1 keeps the image size
_C.INPUT.SCALE_RANGE = [0.5, 2.0]
_C.INPUT.CROP = CN()
_C.INPUT.CROP.ENABLED = True
_C.INPUT.CROP.SIZE = [512, 512]  # (h, w)
_C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75  # re-draw crops dominated by one class (1.0 = off)
_C.INPUT.FLIP = True
_C.INPUT.COLOR_JITTER = CN()
_C.INPUT.COLOR_JITTER.ENABLED = True
_C.INPUT.COLOR_JITTER.BRIGHTNESS = 0.125
_C.INPUT.COLOR_JITTER.CONTRAST = 0.5
_C.INPUT.COLOR_JITTER.SATURATION = 0.5
_C.INPUT.COLOR_JITTER.HUE = 0.05
# Detection: resize the shortest edge (a choice per image in training), cap the longest edge.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # "choice" or "range"
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# Inputs are padded to a multiple of this (the backbone's largest stride); 0 = max stride
_C.INPUT.SIZE_DIVISIBILITY = 32

# ---------------------------------------------------------------------------------------------
# DATASETS / DATALOADER
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()
# Register datasets from the config alone: a list of dicts, each with NAME, TYPE ("sem_seg" or
# "coco"), and the keys of that type (see datasets/README.md).
_C.DATASETS.CUSTOM = []

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 2
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# ---------------------------------------------------------------------------------------------
# SOLVER
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "SGD"  # "SGD" or "AdamW"
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"  # WarmupMultiStepLR, WarmupCosineLR, WarmupPolyLR
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.01
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.BETAS = (0.9, 0.999)  # AdamW
_C.SOLVER.WEIGHT_DECAY = 0.0005
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay of norm layers (and their biases)
_C.SOLVER.WEIGHT_DECAY_BIAS = None  # None = same as WEIGHT_DECAY
_C.SOLVER.BIAS_LR_FACTOR = 1.0
# LR multipliers by parameter-name prefix, e.g. [["sem_seg_head", 10.0]]; first match wins.
_C.SOLVER.LR_MULTIPLIERS = []
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.POLY_POWER = 0.9
_C.SOLVER.COSINE_END_LR_FACTOR = 0.0
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 0
_C.SOLVER.WARMUP_METHOD = "linear"  # "linear" or "constant"
_C.SOLVER.IMS_PER_BATCH = 16  # total over all processes
# When > 0 and the world size differs, scale LR, iterations and batch linearly (Detectron2).
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Write console / metrics.json / TensorBoard every this many iterations (and at the end).
_C.SOLVER.LOG_PERIOD = 20
_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False
_C.SOLVER.CLIP_GRADIENTS = CN()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"  # "norm" or "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 35.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

# ---------------------------------------------------------------------------------------------
# TEST
# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.EVAL_PERIOD = 0  # 0 = evaluate only at the end
# Keep model_best.pth by this metric ("" = off), e.g. "sem_seg/mIoU" or "bbox/AP"; mode max/min
_C.TEST.BEST_CHECKPOINT_METRIC = ""
_C.TEST.BEST_CHECKPOINT_MODE = "max"
_C.TEST.DETECTIONS_PER_IMAGE = 100
# Semantic segmentation inference: "whole" or "slide" (sliding window of CROP_SIZE / STRIDE)
_C.TEST.SEM_SEG = CN()
_C.TEST.SEM_SEG.MODE = "whole"
_C.TEST.SEM_SEG.CROP_SIZE = [512, 512]
_C.TEST.SEM_SEG.STRIDE = [341, 341]
_C.TEST.SEM_SEG.FLIP = False
_C.TEST.SEM_SEG.SCALES = [1.0]
# Boundary IoU band width as a fraction of the image diagonal (Cheng et al. use 0.02).
_C.TEST.SEM_SEG.BOUNDARY_DILATION_RATIO = 0.02

# ---------------------------------------------------------------------------------------------
# Distillation (docs/methods.md). Empty LOSSES = plain training.
# ---------------------------------------------------------------------------------------------
# Every KD key (the general ones and the per-loss KD.<LOSS> nodes) is declared in
# bcd/config/kd_defaults.py (torch-free, so that importing bcd.config loads no model code; the
# Detectron2 project projects/bcd adds the same node to a Detectron2 config); none is declared
# here.
add_kd_config(_C)

# ---------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"
# Seed of python / numpy / torch; per-rank seed = SEED + rank. Negative = random seed.
_C.SEED = 0
# Deterministic algorithms (torch.use_deterministic_algorithms) for exact resume checks.
_C.DETERMINISTIC = False
_C.CUDNN_BENCHMARK = False

# ---------------------------------------------------------------------------------------------
# Object segmentation (salient / camouflaged objects) and SKD self-distillation (issue 12,
# docs/methods.md §3). [R] marks a reconstruction of a detail the SKD paper does not give us.
# ---------------------------------------------------------------------------------------------
_C.INPUT.OBJECT_SEG = CN()
# Masks are read as 8-bit grayscale; foreground = value > MASK_THRESHOLD (128 as pysodmetrics,
# which binarises ground truth by `gt > 128`).
_C.INPUT.OBJECT_SEG.MASK_THRESHOLD = 128
# A dataset whose masks hold only 0 and 1 (checked at start-up) would be empty under that rule:
# "binary" reads it as 0 = background, 1 = object (threshold 0 for it, with a warning); "error"
# refuses it.
_C.INPUT.OBJECT_SEG.ZERO_ONE_MASKS = "binary"
# Training: resize to TRAIN_SIZE (h, w; aspect not kept, F3Net convention [R]), random crop of
# up to CROP_FRACTION of each side (F3Net RandomCrop: 1/8) resized back, flip (INPUT.FLIP).
_C.INPUT.OBJECT_SEG.TRAIN_SIZE = [352, 352]
_C.INPUT.OBJECT_SEG.CROP_FRACTION = 0.125
# Test: the image is resized to TEST_SIZE; the prediction is resized back and evaluated at the
# mask's original size.
_C.INPUT.OBJECT_SEG.TEST_SIZE = [352, 352]

_C.MODEL.OBJECT_SEG = CN()
# Inference network (docs/methods.md §3.2 [R]): 1x1 conv-BN-ReLU to CHANNELS per level, upsampled to
# the finest level, concatenated, 3x3 conv-BN-ReLU, 1x1 conv to one logit.
_C.MODEL.OBJECT_SEG.IN_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.OBJECT_SEG.CHANNELS = 64
_C.MODEL.OBJECT_SEG.NORM = "BN"
# Task loss: "structure" (weighted BCE + weighted IoU, F3Net) or "bce".
_C.MODEL.OBJECT_SEG.LOSS = "structure"
_C.MODEL.OBJECT_SEG.STRUCTURE_KERNEL = 31  # F3Net's boundary-weight window at 352 px
_C.MODEL.OBJECT_SEG.BACKBONE_LR_MULTIPLIER = 0.1  # F3Net convention, unverified for SKD [R]

_C.MODEL.SKD = CN()
# "none" (inference network alone), "skd" (pyramid self-distillation), "byot", "dks".
_C.MODEL.SKD.METHOD = "none"
# Auxiliary (training-only) network: a pyramid block per level of MODEL.OBJECT_SEG.IN_FEATURES.
_C.MODEL.SKD.PYRAMID = "aspp"  # "aspp" (2022 paper) or "denseaspp" (JEIT 2025) [R]
_C.MODEL.SKD.AUX_CHANNELS = 64
_C.MODEL.SKD.ASPP_DILATIONS = [6, 12, 18]  # plus a 1x1 branch and image pooling [R]
_C.MODEL.SKD.DENSEASPP_DILATIONS = [3, 6, 12, 18]
# "auto": top-down adjacent fusion for skd, independent branches for byot / dks;
# "top_down" or "none" force one.
_C.MODEL.SKD.AUX_FUSION = "auto"
# Deep supervision of the auxiliary maps, finest level first (w_l = 1/2^(l-2)) [R].
_C.MODEL.SKD.AUX_LOSS_WEIGHTS = [1.0, 0.5, 0.25, 0.125]
# Synergy distillation loss: top-down path (coarser refined map teaches the next finer one, the
# finest teaches the inference output) and consistency path ("feature", "prediction", "none").
_C.MODEL.SKD.TOP_DOWN_WEIGHT = 1.0  # [R] placeholder: the paper's weights are unknown
_C.MODEL.SKD.CONSISTENCY = "feature"
_C.MODEL.SKD.CONSISTENCY_WEIGHT = 1.0  # [R]
# Pixel divergence of the distillation terms: "bce" (soft BCE * T^2), "kl" (binary KL * T^2)
# or "mse" (of the probabilities); temperature T.
_C.MODEL.SKD.DIVERGENCE = "bce"
_C.MODEL.SKD.TEMPERATURE = 1.0
# BYOT baseline (Zhang et al. ICCV'19): branches get (1 - ALPHA) * task + ALPHA * KD from the
# deepest branch (temperature BYOT_TEMPERATURE) + FEATURE_WEIGHT * L2 hint to its feature.
_C.MODEL.SKD.BYOT_ALPHA = 0.3
_C.MODEL.SKD.BYOT_TEMPERATURE = 3.0
_C.MODEL.SKD.BYOT_FEATURE_WEIGHT = 0.03
# DKS baseline (Sun et al. CVPR'19): pairwise synergy among the auxiliary maps and the output.
_C.MODEL.SKD.DKS_WEIGHT = 1.0

_C.TEST.OBJECT_SEG = CN()
# Standard SOD protocol: the probability map is saved as an 8-bit image and min-max normalised
# by the evaluation toolbox (pysodmetrics `normalize=True`). False: the probabilities as they are.
_C.TEST.OBJECT_SEG.SAVE_UINT8_NORMALIZE = True
_C.TEST.OBJECT_SEG.SAVE_PREDICTIONS = False  # write OUTPUT_DIR/.../predictions/<id>.png

# ---------------------------------------------------------------------------------------------
# Issue 24: SegFormer (MiT + all-MLP decoder), ESPNet, and Mask2Former as a teacher
# (bcd/modeling/backbone/{mit,espnet}.py, heads/{segformer,espnet}.py, meta_arch/mask2former.py;
# docs/internals.md "Models"). Weights of the transformers-based models are
# transformers checkpoints: hf://<repo_id> names or save_pretrained folders.
# ---------------------------------------------------------------------------------------------
# SegFormer's Mix Transformer encoder ("build_mit_backbone"): MiT-B0 .. B5, on transformers'
# SegformerModel. The decoder width MODEL.SEM_SEG_HEAD.CHANNELS is 256 for B0/B1, 768 for B2-B5.
_C.MODEL.SEGFORMER = CN()
_C.MODEL.SEGFORMER.VARIANT = "b0"  # "b0" .. "b5"
_C.MODEL.SEGFORMER.DROP_PATH_RATE = 0.1  # stochastic depth of the encoder (SegFormer: 0.1)

# ESPNet (Mehta et al., ECCV 2018; "build_espnet_backbone" + "ESPNetHead"): ESP modules at
# stride 4 (alpha_2) and stride 8 (alpha_3); the paper's ESPNet has 2 and 8 (0.36 M parameters).
_C.MODEL.ESPNET = CN()
_C.MODEL.ESPNET.ALPHA2 = 2
_C.MODEL.ESPNET.ALPHA3 = 8

# Mask2Former (META_ARCHITECTURE "Mask2FormerSegmentor", transformers' Mask2FormerForUniversal-
# Segmentation) for semantic segmentation; classes MODEL.SEM_SEG_HEAD.NUM_CLASSES. Names follow
# Detectron2's Mask2Former config (MODEL.MASK_FORMER.*). Defaults: the ADE20K semantic recipe.
_C.MODEL.MASK2FORMER = CN()
# Backbone (transformers' Swin or ResNet): "swin" (MODEL.MASK2FORMER.SWIN) or "resnet"
# (RESNET_DEPTH: 50 / 101 bottleneck, 18 / 34 basic). ImageNet weights: MODEL.BACKBONE.WEIGHTS,
# a transformers checkpoint (hf://microsoft/swin-tiny-patch4-window7-224, hf://microsoft/resnet-50).
_C.MODEL.MASK2FORMER.BACKBONE = "swin"
_C.MODEL.MASK2FORMER.SWIN = CN()
_C.MODEL.MASK2FORMER.SWIN.EMBED_DIM = 96  # Swin-T; Swin-S: depths [2, 2, 18, 2]
_C.MODEL.MASK2FORMER.SWIN.DEPTHS = [2, 2, 6, 2]
_C.MODEL.MASK2FORMER.SWIN.NUM_HEADS = [3, 6, 12, 24]
_C.MODEL.MASK2FORMER.SWIN.WINDOW_SIZE = 7
_C.MODEL.MASK2FORMER.SWIN.DROP_PATH_RATE = 0.3
_C.MODEL.MASK2FORMER.RESNET_DEPTH = 50
# Pixel decoder (multi-scale deformable attention encoder) and masked-attention decoder
_C.MODEL.MASK2FORMER.CONVS_DIM = 256  # pixel decoder width (transformers feature_size)
_C.MODEL.MASK2FORMER.MASK_DIM = 256  # per-pixel embedding (mask features) width
_C.MODEL.MASK2FORMER.ENC_LAYERS = 6  # deformable-attention layers of the pixel decoder
_C.MODEL.MASK2FORMER.ENC_DIM_FEEDFORWARD = 1024
_C.MODEL.MASK2FORMER.HIDDEN_DIM = 256  # query width of the transformer decoder
_C.MODEL.MASK2FORMER.NUM_QUERIES = 100
_C.MODEL.MASK2FORMER.NHEADS = 8
_C.MODEL.MASK2FORMER.DIM_FEEDFORWARD = 2048
_C.MODEL.MASK2FORMER.DEC_LAYERS = 10  # Detectron2's DEC_LAYERS: 9 decoder layers + the first prediction
# Training loss (Hungarian matching on sampled points, transformers' Mask2FormerLoss)
_C.MODEL.MASK2FORMER.CLASS_WEIGHT = 2.0
_C.MODEL.MASK2FORMER.MASK_WEIGHT = 5.0
_C.MODEL.MASK2FORMER.DICE_WEIGHT = 5.0
_C.MODEL.MASK2FORMER.NO_OBJECT_WEIGHT = 0.1
_C.MODEL.MASK2FORMER.TRAIN_NUM_POINTS = 12544
_C.MODEL.MASK2FORMER.OVERSAMPLE_RATIO = 3.0
_C.MODEL.MASK2FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75
# What the teacher publishes for distillation (docs/methods.md §2.11):
# FEATURES: backbone.res2..res5 are the pixel decoder's maps ("pixel_decoder", default: the mask
# features at 1/4 and the multi-scale maps at 1/8, 1/16, 1/32) or the backbone's stages
# ("backbone": the stages before the pixel decoder, the other reading of "the backbone's
# hierarchical features").
_C.MODEL.MASK2FORMER.FEATURES = "pixel_decoder"
# LOGITS: what "logits" / sem_seg_head.predictor carry, from the semantic scores
# s = softmax(class)[:-1] x sigmoid(mask) summed over queries: "log_scores" (log s, so that a KD
# softmax gives s normalised over the classes) or "scores" (s itself).
_C.MODEL.MASK2FORMER.LOGITS = "log_scores"
