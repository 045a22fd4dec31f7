"""Mask2Former (Cheng, Misra, Schwing, Kirillov, Girdhar, *Masked-attention Mask Transformer for
Universal Image Segmentation*, CVPR 2022) for semantic segmentation, on Hugging Face
``transformers``' model code (``Mask2FormerForUniversalSegmentation``), mainly as a
distillation teacher.

``Mask2FormerSegmentor`` is a ``SemanticSegmentor`` (same preprocessing, test-time scales / flips
/ sliding windows, output contract) whose network is transformers' Mask2Former: a Swin or ResNet
backbone, the multi-scale deformable-attention pixel decoder, and the masked-attention
transformer decoder whose ``Q`` queries each predict a class distribution (``K`` classes + "no
object") and a mask. Mask2Former does not fit a backbone + per-pixel head pair: it is trained by
Hungarian matching of its queries to the image's class masks, not by per-pixel cross-entropy.

What it publishes (``extract``, the names distillation reads; docs/internals.md):

* ``logits`` / ``sem_seg_head.predictor``: the semantic inference of Mask2Former
  (``semantic_inference`` of the authors' code, ``post_process_semantic_segmentation`` of
  transformers): ``s[b, c, y, x] = Σ_q softmax(class_q)[c] · sigmoid(mask_q)[y, x]`` over the
  ``K`` real classes, at 1/4 of the input, as ``log s`` (``MODEL.MASK2FORMER.LOGITS:
  log_scores``, default: a KD softmax of it at τ = 1 is ``s`` normalised over the classes) or
  ``s`` (``scores``);
* ``features`` / ``backbone.res2`` .. ``backbone.res5`` (identity modules): with
  ``MODEL.MASK2FORMER.FEATURES: pixel_decoder`` (default) the pixel decoder's maps, i.e. the
  per-pixel embedding ("mask features", ``MASK_DIM`` channels, 1/4) and the multi-scale maps at
  1/8, 1/16, 1/32 (``CONVS_DIM`` channels) the transformer decoder attends to; with ``backbone``
  the backbone's four stages (1/4 .. 1/32);
* ``sem_seg_head.feature``: the mask features (the per-pixel embedding the query embeddings are
  multiplied with; 1/4).

Training (``forward_batch``): the image's classes become binary masks (``sem_seg == c`` for each
class ``c`` present; ignored and padded pixels are in no mask, as in the authors' semantic dataset
mapper) and transformers' ``Mask2FormerLoss`` (Hungarian matching on sampled points, cross-entropy
+ sigmoid BCE + dice, every decoder layer supervised) gives the losses, keyed as transformers keys
them (``loss_cross_entropy``, ``loss_mask``, ``loss_dice``, ``..._<layer>``).

Weights: ``MODEL.BACKBONE.WEIGHTS`` takes a transformers backbone checkpoint (ImageNet Swin /
ResNet: ``hf://microsoft/swin-tiny-patch4-window7-224``, ``hf://microsoft/resnet-50``);
``MODEL.WEIGHTS`` and ``KD.TEACHER.WEIGHTS`` a whole Mask2Former checkpoint
(``hf://facebook/mask2former-swin-tiny-ade-semantic``, a ``save_pretrained`` folder) or a ``bcd``
checkpoint of this model. Its state dict is transformers' under ``mask2former.``.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...structures.image_batch import ImageBatch, pad_to_divisible
from ..backbone.backbone import STAGE_NAMES, Backbone
from ..backbone.weights import PretrainedWeightsError
from ..hf_checkpoint import HF_CHECKPOINT_CONVERTERS, load_hf_pretrained, prefixed_state
from .build import META_ARCH_REGISTRY
from .semantic_seg import SemanticSegmentor

__all__ = ["Mask2FormerSegmentor", "mask2former_config", "semantic_scores", "semantic_targets"]

_STAGES = ["stage1", "stage2", "stage3", "stage4"]
# transformers ResNetConfig per depth: (blocks per stage, layer type, stage widths)
_RESNETS = {
    18: ([2, 2, 2, 2], "basic", [64, 128, 256, 512]),
    34: ([3, 4, 6, 3], "basic", [64, 128, 256, 512]),
    50: ([3, 4, 6, 3], "bottleneck", [256, 512, 1024, 2048]),
    101: ([3, 4, 23, 3], "bottleneck", [256, 512, 1024, 2048]),
}
_FEATURES = ("pixel_decoder", "backbone")
_LOGITS = ("log_scores", "scores")
# log() of the semantic scores: a class no query covers has s = 0
_LOG_EPS = 1e-6


def mask2former_config(cfg):
    """The ``transformers.Mask2FormerConfig`` of ``MODEL.MASK2FORMER`` with
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` classes and ``IGNORE_VALUE``.

    Raises:
        ValueError: an unknown backbone / ResNet depth, naming the key.
    """
    from transformers import Mask2FormerConfig, ResNetConfig, SwinConfig

    m = cfg.MODEL.MASK2FORMER
    if m.BACKBONE == "swin":
        s = m.SWIN
        backbone = SwinConfig(
            embed_dim=int(s.EMBED_DIM), depths=list(s.DEPTHS), num_heads=list(s.NUM_HEADS),
            window_size=int(s.WINDOW_SIZE), drop_path_rate=float(s.DROP_PATH_RATE), out_features=_STAGES,
        )
    elif m.BACKBONE == "resnet":
        if int(m.RESNET_DEPTH) not in _RESNETS:
            raise ValueError(f"MODEL.MASK2FORMER.RESNET_DEPTH must be one of {sorted(_RESNETS)}; got {m.RESNET_DEPTH}")
        depths, layer_type, widths = _RESNETS[int(m.RESNET_DEPTH)]
        backbone = ResNetConfig(depths=depths, layer_type=layer_type, hidden_sizes=widths,
                                embedding_size=64, out_features=_STAGES)
    else:
        raise ValueError(f"MODEL.MASK2FORMER.BACKBONE must be 'swin' or 'resnet'; got '{m.BACKBONE}'")
    return Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=Mask2FormerSegmentor.CLASS_COUNT.num_classes(cfg),
        ignore_value=int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
        feature_size=int(m.CONVS_DIM), mask_feature_size=int(m.MASK_DIM),
        encoder_layers=int(m.ENC_LAYERS), encoder_feedforward_dim=int(m.ENC_DIM_FEEDFORWARD),
        hidden_dim=int(m.HIDDEN_DIM), num_queries=int(m.NUM_QUERIES), num_attention_heads=int(m.NHEADS),
        dim_feedforward=int(m.DIM_FEEDFORWARD), decoder_layers=int(m.DEC_LAYERS),
        class_weight=float(m.CLASS_WEIGHT), mask_weight=float(m.MASK_WEIGHT), dice_weight=float(m.DICE_WEIGHT),
        no_object_weight=float(m.NO_OBJECT_WEIGHT), train_num_points=int(m.TRAIN_NUM_POINTS),
        oversample_ratio=float(m.OVERSAMPLE_RATIO), importance_sample_ratio=float(m.IMPORTANCE_SAMPLE_RATIO),
        use_auxiliary_loss=True,
    )


def semantic_scores(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Mask2Former's semantic inference: ``Σ_q softmax(class_q)[:K] · sigmoid(mask_q)``.

    Args:
        class_logits: ``B×Q×(K+1)`` (the last class is "no object").
        mask_logits: ``B×Q×h×w``.

    Returns:
        ``B×K×h×w`` class scores (in ``[0, Q]``), as the authors' ``semantic_inference``
        (facebookresearch/Mask2Former, ``mask_former_model.py``).
    """
    probs = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid())


def semantic_targets(sem_seg: Tensor, num_classes: int, ignore_value: int) -> Tuple[List[Tensor], List[Tensor]]:
    """Per image, the binary mask of every class present and its class id (Mask2Former's
    semantic targets; ignored pixels are in no mask).

    Args:
        sem_seg: ``B×H×W`` int64 labels in ``[0, K)`` or ``ignore_value``.

    Returns:
        ``(mask_labels, class_labels)``: lists of ``N_i×H×W`` float and ``N_i`` int64 tensors.

    Raises:
        ValueError: a label outside ``[0, K)`` other than the ignore value.
    """
    masks, classes = [], []
    for label in sem_seg:
        ids = torch.unique(label)
        ids = ids[ids != ignore_value]
        bad = ids[(ids < 0) | (ids >= num_classes)]
        if bad.numel():
            raise ValueError(
                f"sem_seg holds labels {bad.tolist()} outside [0, {num_classes}) (MODEL.SEM_SEG_HEAD."
                f"NUM_CLASSES) other than the ignore value {ignore_value}"
            )
        masks.append((label[None] == ids[:, None, None]).float())
        classes.append(ids.long())
    return masks, classes


class FeatureTaps(Backbone):
    """Identity modules ``stem``, ``res2`` .. ``res5`` through which a model passes maps it
    computes elsewhere, so that forward hooks on ``backbone.res3`` see them (no parameters).

    Args:
        channels: channels of res2 .. res5.
        strides: strides of res2 .. res5.
    """

    def __init__(self, channels: List[int], strides: List[int]) -> None:
        super().__init__()
        self.stem = nn.Identity()
        for name, c, s in zip(STAGE_NAMES, channels, strides):
            self.add_module(name, nn.Identity())
            self._out_feature_channels[name] = int(c)
            self._out_feature_strides[name] = int(s)
        self._out_features = list(STAGE_NAMES)

    def tap(self, maps: List[Tensor]) -> Dict[str, Tensor]:
        """``[res2, res3, res4, res5]`` -> the dict of the backbone convention, through the taps."""
        return {n: getattr(self, n)(x) for n, x in zip(STAGE_NAMES, maps)}


class _HeadTaps(nn.Module):
    """``feature`` and ``predictor``: identity modules for the head's named outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = nn.Identity()
        self.predictor = nn.Identity()


@META_ARCH_REGISTRY.register()
class Mask2FormerSegmentor(SemanticSegmentor):
    """transformers' Mask2Former as a semantic segmentor (see the module docstring).

    Named modules: ``mask2former`` (``Mask2FormerForUniversalSegmentation``), ``backbone.stem``
    (the normalised input), ``backbone.res2`` .. ``backbone.res5``, ``sem_seg_head.feature``,
    ``sem_seg_head.predictor`` (identities on what ``extract`` publishes).
    """

    # the classes are configured as for every semantic segmentor (mask2former_config reads them)
    CLASS_COUNT = SemanticSegmentor.CLASS_COUNT

    def build_networks(self, cfg) -> None:
        """The transformers model of :func:`mask2former_config` and the feature taps; loads
        ``MODEL.BACKBONE.WEIGHTS`` into its backbone when set."""
        from transformers import Mask2FormerForUniversalSegmentation

        m = cfg.MODEL.MASK2FORMER
        if m.FEATURES not in _FEATURES:
            raise ValueError(f"MODEL.MASK2FORMER.FEATURES must be one of {_FEATURES}; got '{m.FEATURES}'")
        if m.LOGITS not in _LOGITS:
            raise ValueError(f"MODEL.MASK2FORMER.LOGITS must be one of {_LOGITS}; got '{m.LOGITS}'")
        if cfg.MODEL.AUX_HEAD.ENABLED:
            raise ValueError(
                "MODEL.AUX_HEAD.ENABLED must be False for Mask2FormerSegmentor: every decoder layer "
                "is supervised by Mask2Former's own loss"
            )
        if cfg.MODEL.BACKBONE.FREEZE_AT:
            raise ValueError("MODEL.BACKBONE.FREEZE_AT is not supported by Mask2FormerSegmentor; set it to 0")
        self.hf_config = mask2former_config(cfg)
        self.mask2former = Mask2FormerForUniversalSegmentation(self.hf_config)
        self.features_from = m.FEATURES
        self.logits_mode = m.LOGITS
        if m.FEATURES == "pixel_decoder":
            channels = [int(m.MASK_DIM)] + [int(m.CONVS_DIM)] * 3
        else:
            channels = list(self.mask2former.model.pixel_level_module.encoder.channels)
        self.backbone = FeatureTaps(channels, [4, 8, 16, 32])
        self.sem_seg_head = _HeadTaps()
        self.aux_head = None
        if cfg.MODEL.BACKBONE.WEIGHTS:
            self.load_backbone_weights(cfg.MODEL.BACKBONE.WEIGHTS)

    # ------------------------------------------------------------------------------ weights
    def load_backbone_weights(self, path: str) -> None:
        """Load a transformers backbone checkpoint (ImageNet Swin / ResNet) strictly into the
        backbone; the Swin backbone's output norms, which classification checkpoints lack, keep
        their initialisation (as in the authors' code).

        Raises:
            FileNotFoundError, PretrainedWeightsError (names the file and the keys).
        """
        from ...utils.state_dict import state_dict_mismatch

        target = self.mask2former.model.pixel_level_module.encoder
        # the backbone's own class (SwinBackbone / ResNetBackbone), not AutoBackbone: transformers'
        # AutoBackbone.from_pretrained asks the hub whether a local folder is a repo
        pretrained = load_hf_pretrained(type(target), path, "MODEL.BACKBONE.WEIGHTS",
                                        allow_missing=("hidden_states_norms",), out_features=_STAGES)
        own = target.state_dict()
        # the output norms the classification checkpoint lacks keep their initialisation
        state = {**{k: v for k, v in own.items() if "hidden_states_norms" in k}, **pretrained.state_dict()}
        problem = state_dict_mismatch(own, state)
        if problem:
            raise PretrainedWeightsError(
                f"MODEL.BACKBONE.WEIGHTS '{path}' does not fit the {type(target).__name__} of "
                f"MODEL.MASK2FORMER: {problem}"
            )
        target.load_state_dict(state, strict=True)

    # ------------------------------------------------------------------------------ outputs
    def scores_to_logits(self, scores: Tensor) -> Tensor:
        """``B×K×h×w`` semantic scores -> what ``logits`` carries (``MODEL.MASK2FORMER.LOGITS``)."""
        if self.logits_mode == "log_scores":
            return scores.clamp_min(_LOG_EPS).log()
        return scores

    def extract(self, batch: ImageBatch) -> Dict[str, object]:
        """``{"logits": B×K×h/4×w/4, "features": {res2..res5}}`` of the padded batch (see the
        module docstring for what they are)."""
        self.backbone.stem(batch.tensor)
        out = self.mask2former(pixel_values=batch.tensor, output_hidden_states=True)
        if self.features_from == "pixel_decoder":
            multi = out.pixel_decoder_hidden_states  # 1/32, 1/16, 1/8
            maps = [out.pixel_decoder_last_hidden_state, multi[2], multi[1], multi[0]]
        else:
            maps = list(out.encoder_hidden_states)
        features = self.backbone.tap(maps)
        self.sem_seg_head.feature(out.pixel_decoder_last_hidden_state)
        scores = semantic_scores(out.class_queries_logits, out.masks_queries_logits)
        return {"logits": self.sem_seg_head.predictor(self.scores_to_logits(scores)), "features": features}

    def forward_batch(self, batch: ImageBatch):
        """Training: transformers' Mask2Former losses (each multiplied by
        ``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT``). Evaluation: ``SemanticSegmentor.inference``."""
        if not self.training:
            return self.inference(batch)
        if batch.sem_seg is None:
            raise ValueError("Mask2FormerSegmentor needs 'sem_seg' in every input dict for training")
        mask_labels, class_labels = semantic_targets(batch.sem_seg, self.num_classes, self.ignore_value)
        out = self.mask2former(pixel_values=batch.tensor, output_auxiliary_logits=True)
        losses = self.mask2former.get_loss_dict(
            masks_queries_logits=out.masks_queries_logits,
            class_queries_logits=out.class_queries_logits,
            mask_labels=mask_labels,
            class_labels=class_labels,
            auxiliary_predictions=out.auxiliary_logits,
        )
        return {k: self.loss_weight * v for k, v in losses.items()}

    def whole_logits(self, image: Tensor) -> Tensor:
        """``1×3×h×w`` -> ``1×K×h×w``: the mask logits upsampled (bilinear) to the padded input
        before the semantic inference, as the authors' code, padding cropped away."""
        h, w = image.shape[-2:]
        padded = pad_to_divisible([image[0]], self.size_divisibility, 0.0)
        out = self.mask2former(pixel_values=padded)
        masks = F.interpolate(out.masks_queries_logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return self.scores_to_logits(semantic_scores(out.class_queries_logits, masks)[:, :, :h, :w])


def convert_mask2former_checkpoint(folder: str, model: nn.Module, key: str = "MODEL.WEIGHTS") -> Dict[str, Tensor]:
    """A ``Mask2FormerForUniversalSegmentation`` checkpoint with the keys of
    ``Mask2FormerSegmentor`` (``mask2former.`` + transformers' keys). The loss's class weights
    (a buffer of the training criterion) are the model's own (``MODEL.MASK2FORMER.NO_OBJECT_WEIGHT``)."""
    from transformers import Mask2FormerForUniversalSegmentation

    hf = load_hf_pretrained(Mask2FormerForUniversalSegmentation, folder, key,
                            allow_missing=("criterion.",))
    state = prefixed_state(hf.state_dict(), {"": "mask2former."})
    own = model.state_dict()
    state.update({k: v for k, v in own.items() if k.startswith("mask2former.criterion.")})
    return {k: v for k, v in state.items() if not k.startswith("mask2former.criterion.") or k in own}


HF_CHECKPOINT_CONVERTERS["mask2former"] = convert_mask2former_checkpoint
