"""The ``KD`` config node: the general keys and the per-loss nodes ``KD.<LOSS>`` (one function per
loss), no torch, no model code.

``bcd/config/defaults.py`` calls :func:`add_kd_config` (the general ``KD`` keys, then
:func:`add_kd_loss_configs`) on the default config, so
``get_cfg()`` is a plain copy of ``_C`` and importing ``bcd.config`` loads nothing of
``bcd.distill`` / ``bcd.modeling`` / ``bcd.engine`` (the layers import strictly downward, see
docs/internals.md). The loss classes in ``bcd/distill/losses/`` read these nodes through
``DistillLoss.config_node(cfg)`` (``cfg.KD[<CONFIG_KEY>]``).

Every ``KD`` key is declared here and nowhere else: a new loss adds its function here and one
line in :func:`add_kd_loss_configs`; a Detectron2 project adds every KD key to its own
``CfgNode`` with :func:`add_kd_config`. The math behind the defaults is in docs/methods.md.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .config import CfgNode as CN

__all__ = [
    "add_common_loss_config",
    "add_kd_config",
    "add_kd_loss_configs",
    "add_temperature_config",
]

# Backbone stages BCD concatenates at 1/8 (docs/methods.md §2.3).
_BACKBONE_LEVELS = ["backbone.res2", "backbone.res3", "backbone.res4", "backbone.res5"]
_FPN_P3_P6 = ["backbone[p3]", "backbone[p4]", "backbone[p5]", "backbone[p6]"]
_FPN_P3_P7 = _FPN_P3_P6 + ["backbone[p7]"]


# ---------------------------------------------------------------------------------- helpers
def add_common_loss_config(
    node: CN,
    weight: float,
    student_features: Sequence[str],
    teacher_features: Sequence[str],
    schedule: str = "",
    mask: Optional[bool] = True,
) -> CN:
    """Add the keys every loss node has (in place) and return the node.

    Keys: ``WEIGHT`` (λ), ``STUDENT_FEATURES`` / ``TEACHER_FEATURES`` (module paths, see
    ``bcd/distill/recorder.py``), ``MASK`` (the validity mask of docs/methods.md §1.2; only for
    losses that use one: ``mask=None`` declares no key), ``SCHEDULE.NAME`` (``""`` = use
    ``KD.SCHEDULE.NAME``; ``"constant"`` or ``"linear_decay"``), ``SCHEDULE.WARMUP_ITERS``,
    ``SCHEDULE.STOP_ITER`` (0 = never; the weight is 0 from that iteration on).
    """
    node.WEIGHT = float(weight)
    node.STUDENT_FEATURES = list(student_features)
    node.TEACHER_FEATURES = list(teacher_features)
    if mask is not None:
        node.MASK = bool(mask)
    node.SCHEDULE = CN()
    node.SCHEDULE.NAME = schedule
    node.SCHEDULE.WARMUP_ITERS = 0
    node.SCHEDULE.STOP_ITER = 0
    return node


def add_temperature_config(node: CN, init: float = 1.0, adaptive: bool = True) -> None:
    """``node.TEMPERATURE``: ``INIT`` (τ₀), ``ADAPTIVE``, ``FACTOR`` (γ), ``TRIGGER``
    (``"maxprob"`` / ``"range"``), ``THRESHOLD`` (0.5 for maxprob; θ for range, ≤ 0 = ln(row));
    ``node.TAU_SQUARED``: multiply the loss by τ²."""
    node.TEMPERATURE = CN()
    node.TEMPERATURE.INIT = float(init)
    node.TEMPERATURE.ADAPTIVE = adaptive
    node.TEMPERATURE.FACTOR = 1.05
    node.TEMPERATURE.TRIGGER = "maxprob"
    node.TEMPERATURE.THRESHOLD = 0.5
    # Hinton / Phuong & Lampert convention (docs/methods.md §2.7).
    node.TAU_SQUARED = True


# ---------------------------------------------------------------------------------- BCD
def add_bcd_hfa_config(cfg: CN) -> None:
    """``KD.BCD_HFA``: the student-side hierarchical feature aggregation shared by L_bd / L_cd."""
    cfg.KD.BCD_HFA = CN()
    cfg.KD.BCD_HFA.DIM = 128  # d per level: C = 4 × 128 = 512
    cfg.KD.BCD_HFA.NORM = "BN"  # student-side norm; "GN4" as IRNet
    cfg.KD.BCD_HFA.STRIDE = 8  # the common grid is 1/STRIDE of the padded input


def _bcd_range_trigger(node: CN) -> None:
    """BCD's temperature rule as the paper words it: τ grows by γ whenever the range of the
    teacher's scores / τ over the minibatch exceeds θ; THRESHOLD ≤ 0 means θ = ln(row length)
    (68 neighbours for L_bd, N tokens for L_cd). The maxprob rule of Phuong & Lampert never fires
    on these rows (projects/bcd/README.md "Calibration")."""
    node.TEMPERATURE.TRIGGER = "range"
    node.TEMPERATURE.THRESHOLD = 0.0


def add_boundary_config(cfg: CN) -> None:
    """``KD.BOUNDARY``: BCD's boundary (local affinity) distillation L_bd."""
    node = add_common_loss_config(CN(), 10.0, _BACKBONE_LEVELS, _BACKBONE_LEVELS, "linear_decay")
    node.RADIUS = 5  # local disk at 1/8
    node.DOMAIN = "logit"  # "logit" (default) or "prob"
    node.MODE = "pairwise"  # "pairwise" or "unary" (cheap ablation)
    # "pseudo_affinity", "literal_joint", "frozen_random" or "shared_stopgrad"
    node.TEACHER_HEAD = "pseudo_affinity"
    node.PSEUDO_AFFINITY_WEIGHT = 1.0
    node.BG_CLASS = 0  # IRNet averages fg / bg same-class pairs separately; -1 = no split
    # --- issue 8 calibration (projects/bcd/README.md "Calibration") ---
    # "row_mean": mean over valid rows of the row KL (CIRKD / SERE); "element_mean": also divided
    # by the number of valid neighbours of each row (the per-element reduction α = 10 came with).
    # element_mean: with row_mean, α = 10 / β = 50 swamp the task gradient and BCD hurts the demo
    # student (projects/bcd/README.md "Calibration")
    node.REDUCTION = "element_mean"
    # pseudo_affinity head: fitted on the frozen teacher during the first FIT_ITERS iterations of
    # the run (L_bd is 0 then), frozen afterwards; 0 = trained throughout (the old behaviour)
    node.TEACHER_HEAD_FIT_ITERS = 100
    # teacher aggregation before Conv_T: "hfa" (HFA_T, §2.3) or "identity" (§2.9, FPN variant)
    node.TEACHER_HFA = "hfa"
    add_temperature_config(node, 1.0)
    _bcd_range_trigger(node)
    cfg.KD.BOUNDARY = node


def add_context_config(cfg: CN) -> None:
    """``KD.CONTEXT``: BCD's context (global relation) distillation L_cd."""
    node = add_common_loss_config(CN(), 50.0, _BACKBONE_LEVELS, _BACKBONE_LEVELS, "linear_decay")
    # "fixed_projection", "literal_joint", "frozen_random" or "shared_stopgrad"
    node.TEACHER_HEAD = "fixed_projection"
    node.PROJECTION_SEED = 0
    node.TOKEN_CAP = 4096  # N_max
    node.CHUNK = 1024  # query rows per chunk (<= 0: no chunking)
    node.CHECKPOINT = True  # recompute each chunk in the backward (bounded memory)
    # relation KL: "fused" (O(N·C) memory, analytic backward; bcd/distill/functional/relation.py)
    # or "chunked" (the N×N reference: CHUNK rows at a time, CHECKPOINT)
    node.IMPL = "fused"
    # --- issue 8 calibration (projects/bcd/README.md "Calibration") ---
    # "row_mean" (mean of the row KLs) or "element_mean" (also divided by the valid row length N;
    # default, see KD.BOUNDARY.REDUCTION)
    node.REDUCTION = "element_mean"
    # "dot": X Xᵀ/√C (the paper's Eq. 4); "cosine": L2-normalised tokens, cos / COS_TAU (CIRKD)
    node.RELATION = "dot"
    node.COS_TAU = 0.1
    add_temperature_config(node, 1.0)
    _bcd_range_trigger(node)
    cfg.KD.CONTEXT = node


# ---------------------------------------------------------------------------------- baselines
def add_pixel_kd_config(cfg: CN) -> None:
    """``KD.PIXEL_KD``: per-pixel logit KD (CIRKD defaults τ = 1, λ = 1)."""
    node = add_common_loss_config(CN(), 1.0, ["sem_seg_head.predictor"], ["sem_seg_head.predictor"])
    node.TEMPERATURE = 1.0
    # REDUCTION "tokens" (mean over pixels, CIRKD) or "elementwise" (KLDivLoss() mean over
    # B·K·H·W, APD); RESIZE "logits" (coarser map to the finer) or "input" (both to the label
    # size, align_corners, APD). bcd/distill/losses/pixel_kd.py
    node.REDUCTION = "tokens"
    node.RESIZE = "logits"
    cfg.KD.PIXEL_KD = node


def add_apd_config(cfg: CN) -> None:
    """``KD.APD``: adaptive perspective distillation (bcd/distill/losses/apd.py; exact to the
    authors' code dvlab-research/APD tool/train.py). Losses "APD" (segmentation) and
    "APDDetection" (extension: FPN levels of a detector, ``KD.APD.DET``)."""
    # WEIGHT: the scheduled scale of both entries (AP_WEIGHT / PA_WEIGHT carry the recipe); the
    # decoder feature (code: x_ppm, 512 ch, 1/8); MASK False: L_ap over every cell, ignore and
    # padding included, as the code (True: valid cells only).
    node = add_common_loss_config(CN(), 1.0, ["sem_seg_head.feature"], ["sem_seg_head.feature"], mask=False)
    node.AP_WEIGHT = 10.0  # L_ap, code pred_kmeans_weight
    node.PA_WEIGHT = 10.0  # L_pa, code proto_align_weight
    node.KAPPA = 10.0  # cosine-logit scale, code kmeans_temp
    node.NORMALIZE = True  # L2-normalise features and prototypes, code kmeans_norm
    node.ADAPT_DIM = 512  # hidden width of Tr_S / Tr_T, code kmeans_adapt_dim (0 = teacher width)
    node.STUDENT_ADAPTER = True  # Tr_S, code stu_trans (trained with the student)
    node.TEACHER_ADAPTER = True  # Tr_T, code tea_trans (trained only by L_soft)
    # Tr_T's own Adam (code teacher_lr, betas [0.9, 0.99], no weight decay); its lr stays constant
    node.TEACHER_ADAPTER_LR = 1e-5
    node.TEACHER_ADAPTER_BETAS = [0.9, 0.99]
    # Where the class prototypes are pooled: "gpu_batch" (code: every image of the per-process
    # batch) or "per_image" (abstract's wording: one perspective per image, terms averaged)
    node.SCOPE = "gpu_batch"
    # Detectors [R]: GT boxes assigned to FPN levels by Lin et al.'s rule k = floor(k0 + log2(s/224))
    node.DET = CN()
    node.DET.CANONICAL_BOX_SIZE = 224.0
    node.DET.CANONICAL_LEVEL = 4
    cfg.KD.APD = node


def add_cwd_config(cfg: CN) -> None:
    """``KD.CWD``: channel-wise distillation (CIRKD segmentation defaults τ = 4, λ = 3)."""
    node = add_common_loss_config(CN(), 3.0, ["sem_seg_head.predictor"], ["sem_seg_head.predictor"])
    node.TEMPERATURE = 4.0
    node.CONNECTOR_NORM = ""  # CIRKD: plain 1x1 conv
    cfg.KD.CWD = node


def add_fitnet_config(cfg: CN) -> None:
    """``KD.FITNET``: feature MSE through an adapter (CIRKD: decoder feature, λ = 10)."""
    node = add_common_loss_config(CN(), 10.0, ["sem_seg_head.feature"], ["sem_seg_head.feature"])
    node.CONNECTOR_NORM = ""
    cfg.KD.FITNET = node


def add_structured_kd_config(cfg: CN) -> None:
    """``KD.STRUCTURED_KD``: pair-wise similarity distillation (official λ = 0.5)."""
    node = add_common_loss_config(CN(), 0.5, ["sem_seg_head.feature"], ["sem_seg_head.feature"])
    node.VARIANT = "official"  # "official" (POOL_SCALE nodes) or "cirkd" (2x2 kernel)
    node.POOL_SCALE = 0.5
    cfg.KD.STRUCTURED_KD = node


def add_cirkd_config(cfg: CN) -> None:
    """``KD.CIRKD``: cross-image relational KD (mini-batch + memory terms)."""
    node = add_common_loss_config(CN(), 1.0, ["sem_seg_head.feature"], ["sem_seg_head.feature"])
    node.TEMPERATURE = 0.1  # relation temperature
    node.KD_TEMPERATURE = 1.0  # τ_kd of the memory terms' KL
    node.MINIBATCH_WEIGHT = 1.0
    node.PIXEL_MEMORY_WEIGHT = 0.1
    node.REGION_MEMORY_WEIGHT = 0.1
    node.PIXEL_QUEUE = 20000
    node.REGION_QUEUE = 2000
    node.PIXELS_PER_CLASS = 16
    node.PIXEL_CONTRAST = 4096
    node.REGION_CONTRAST = 1024
    node.MAX_ANCHORS = 4096
    node.POOL = False  # 2x2 average pooling before the mini-batch relation
    # term (i): "fused" (O(N·C) memory, bcd/distill/functional/relation.py) or "chunked" (N×N reference)
    node.IMPL = "fused"
    cfg.KD.CIRKD = node


# ---------------------------------------------------------------------------------- detection
def add_pkd_config(cfg: CN) -> None:
    """``KD.PKD``: Pearson-correlation feature KD (10 per level for one-stage detectors).

    No ``MASK``: PKD standardises over all positions, padding included (mmrazor)."""
    cfg.KD.PKD = add_common_loss_config(CN(), 10.0, _FPN_P3_P6, _FPN_P3_P6, mask=None)


def add_fgd_config(cfg: CN) -> None:
    """``KD.FGD``: focal and global distillation (one-stage detector values).

    No ``MASK``: FGD's ground-truth box masks already weight the focal terms."""
    node = add_common_loss_config(CN(), 1.0, _FPN_P3_P7, _FPN_P3_P7, mask=None)
    node.TEMPERATURE = 0.5
    node.ALPHA_FG = 1e-3
    node.BETA_BG = 5e-4
    node.GAMMA_AT = 5e-4
    node.LAMBDA_GL = 5e-6
    cfg.KD.FGD = node


def add_ld_config(cfg: CN) -> None:
    """``KD.LD``: localization distillation on GFL's side distributions.

    No ``MASK``: the student's ATSS positives already select the cells."""
    node = add_common_loss_config(CN(), 0.25, ["head"], ["head"], mask=None)
    node.TEMPERATURE = 10.0
    cfg.KD.LD = node


def add_kd_loss_configs(cfg: CN) -> None:
    """Declare every ``KD.<LOSS>`` node on ``cfg`` (``defaults.py`` calls it on ``_C``)."""
    add_bcd_hfa_config(cfg)
    add_boundary_config(cfg)
    add_context_config(cfg)
    add_pixel_kd_config(cfg)
    add_apd_config(cfg)
    add_cwd_config(cfg)
    add_fitnet_config(cfg)
    add_structured_kd_config(cfg)
    add_cirkd_config(cfg)
    add_pkd_config(cfg)
    add_fgd_config(cfg)
    add_ld_config(cfg)


# ---------------------------------------------------------------------------------- the node
def add_kd_config(cfg: CN) -> None:
    """Declare the whole ``KD`` node on ``cfg`` (in place): the general keys below, then every
    ``KD.<LOSS>`` node (:func:`add_kd_loss_configs`).

    ``bcd/config/defaults.py`` calls it on ``_C``; the Detectron2 project
    (``projects/bcd/bcd_d2/config.py``, ``add_bcd_config``) calls it on a Detectron2 config, so
    both frameworks read the same keys with the same defaults. ``cfg`` may be any yacs /
    fvcore ``CfgNode``; it must not have a ``KD`` node yet.

    Raises:
        KeyError: ``cfg`` already has a ``KD`` node.
    """
    if "KD" in cfg:
        raise KeyError("add_kd_config: the config already has a KD node")
    cfg.KD = CN()
    # Names of KD_LOSS_REGISTRY entries to turn on, e.g. ["BoundaryDistillation", "ContextDistillation"]
    cfg.KD.LOSSES = []
    cfg.KD.TEACHER = CN()
    cfg.KD.TEACHER.CONFIG_FILE = ""  # the teacher's own config (a student-style config)
    cfg.KD.TEACHER.WEIGHTS = ""  # the trained teacher's checkpoint (required when KD.LOSSES is set)
    cfg.KD.TEACHER.OPTS = []  # overrides of the teacher config, KEY VALUE pairs
    cfg.KD.EVAL_TEACHER = False  # evaluate the teacher before training and put it in kd_report
    # LR multiplier of every trainable KD module (connectors, HFA, boundary heads, projectors):
    # the Distiller exposes lr_multipliers = {"kd_modules": KD.LR_MULTIPLIER} (docs/methods.md §2.8: x10).
    cfg.KD.LR_MULTIPLIER = 10.0
    # Connectors created from the recorded shapes (student -> teacher channels / size).
    cfg.KD.CONNECTOR = CN()
    cfg.KD.CONNECTOR.NORM = "BN"  # norm after the 1x1 conv: "", "BN", "SyncBN", "GN"
    cfg.KD.CONNECTOR.SPATIAL = "interpolate"  # "interpolate" (bilinear) or "pool" (avg when larger)
    # Default weight schedule of every loss whose KD.<LOSS>.SCHEDULE.NAME is "".
    cfg.KD.SCHEDULE = CN()
    cfg.KD.SCHEDULE.NAME = "constant"  # "constant" or "linear_decay" (BCD Eq. 7: 1 - it/max_iter)
    cfg.KD.SCHEDULE.WARMUP_ITERS = 0  # linear warm-up of the weight (0 = none)
    cfg.KD.SCHEDULE.STOP_ITER = 0  # weight is 0 from this iteration on (0 = never)
    # (h, w) of the dummy batch of the dry-run forward that records feature shapes at build time.
    cfg.KD.SHAPE_PROBE_SIZE = [128, 128]
    # kd_report: OUTPUT_DIR of the same student trained without KD ("" = no baseline column), and
    # of the teacher's run ("" = the folder of KD.TEACHER.WEIGHTS); their metrics.json are read.
    cfg.KD.BASELINE_OUTPUT_DIR = ""
    cfg.KD.TEACHER_OUTPUT_DIR = ""
    cfg.KD.REPORT = True  # write OUTPUT_DIR/kd_report.{md,json} after training
    # Log ||grad KD|| / ||grad task|| on the student backbone's parameters (torch.autograd.grad,
    # only on those iterations: one extra backward pass each) as kd/grad_ratio in metrics.json /
    # TensorBoard, every PERIOD iterations. Off by default (it costs two backward passes).
    cfg.KD.LOG_GRAD_RATIO = CN()
    cfg.KD.LOG_GRAD_RATIO.ENABLED = False
    cfg.KD.LOG_GRAD_RATIO.PERIOD = 20
    add_kd_loss_configs(cfg)
