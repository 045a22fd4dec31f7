"""SegFormer's all-MLP decode head (Xie et al., NeurIPS 2021) on ``transformers``' model code
(``SegformerDecodeHead``), for the MiT encoder of ``bcd/modeling/backbone/mit.py``.

Each of the four encoder levels is projected by a linear layer to ``CHANNELS`` (the decoder
width: 256 for B0 / B1, 768 for B2-B5), upsampled to 1/4, the four are concatenated (deepest
first), fused by a 1×1 conv + BN + ReLU, dropped out and classified by a 1×1 conv: logits at
stride 4. This file also registers the converter of full ``SegformerForSemanticSegmentation``
checkpoints (``bcd/modeling/hf_checkpoint.py``): ``segformer.*`` -> ``backbone.encoder.*``,
``decode_head.*`` -> ``sem_seg_head.decode_head.*``.
"""
from __future__ import annotations

from typing import Dict

from torch import Tensor, nn

from ..backbone.backbone import ShapeSpec
from ..backbone.weights import PretrainedWeightsError
from ..hf_checkpoint import (
    HF_CHECKPOINT_CONVERTERS,
    hf_checkpoint_config,
    load_hf_pretrained,
    prefixed_state,
)
from .build import SEM_SEG_HEAD_REGISTRY

__all__ = ["SegFormerHead", "convert_segformer_checkpoint"]

# transformers' default init of SegFormer's layers (PreTrainedModel._init_weights with the
# config's initializer_range): a head built outside SegformerForSemanticSegmentation does not go
# through post_init, so it is applied here
_INIT_STD = 0.02


def _init_like_transformers(module: nn.Module, std: float = _INIT_STD) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@SEM_SEG_HEAD_REGISTRY.register()
class SegFormerHead(nn.Module):
    """``transformers.SegformerDecodeHead`` on ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` (``res2`` ..
    ``res5``), width ``CHANNELS``, dropout ``DROPOUT``, ``NUM_CLASSES`` outputs; ``NORM`` ``BN``
    or ``SyncBN`` (the fuse layer's BatchNorm).

    Named modules: ``decode_head`` (transformers' module, state dict ``decode_head.*`` as in
    ``SegformerForSemanticSegmentation``), ``feature`` (its ReLU after the fuse conv + BN:
    ``B×CHANNELS×H/4×W/4``, the decoder feature before the classifier), ``predictor`` (identity
    on the logits ``B×K×H/4×W/4``: the classifier's output).
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]) -> None:
        super().__init__()
        from transformers import SegformerConfig
        from transformers.models.segformer.modeling_segformer import SegformerDecodeHead

        h = cfg.MODEL.SEM_SEG_HEAD
        self.in_features = list(h.IN_FEATURES)
        missing = [n for n in self.in_features if n not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES: {missing} are not backbone outputs ({list(input_shape)})"
            )
        strides = [input_shape[n].stride for n in self.in_features]
        if strides != sorted(strides):
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES must go from fine to coarse; strides {strides}")
        config = SegformerConfig(
            num_encoder_blocks=len(self.in_features),
            hidden_sizes=[input_shape[n].channels for n in self.in_features],
            decoder_hidden_size=int(h.CHANNELS),
            num_labels=int(h.NUM_CLASSES),
            classifier_dropout_prob=float(h.DROPOUT),
            reshape_last_stage=True,
        )
        decode = SegformerDecodeHead(config)
        _init_like_transformers(decode)
        if h.NORM == "SyncBN":
            decode = nn.SyncBatchNorm.convert_sync_batchnorm(decode)
        elif h.NORM != "BN":
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NORM '{h.NORM}' is not supported by SegFormerHead (BN or SyncBN: "
                "transformers' decode head has one BatchNorm)"
            )
        # ``feature`` is registered before ``decode_head`` so that named_modules() (forward hooks,
        # fvcore) lists transformers' parameter-free ReLU under this name; it is the same module
        # object, so state_dict and parameters are unchanged.
        self.feature = decode.activation
        self.decode_head = decode
        self.predictor = nn.Identity()
        self.common_stride = strides[0]

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """``{res2..res5}`` -> ``B×K×H/4×W/4`` logits (transformers' forward)."""
        return self.predictor(self.decode_head([features[n] for n in self.in_features]))


def convert_segformer_checkpoint(folder: str, model: nn.Module, key: str = "MODEL.WEIGHTS") -> Dict[str, Tensor]:
    """A ``SegformerForSemanticSegmentation`` checkpoint with the keys of a
    ``SemanticSegmentor`` built of ``build_mit_backbone`` + ``SegFormerHead``.

    An encoder-only checkpoint (``nvidia/mit-b0``, ImageNet) lacks the decode head: that is an
    error naming ``MODEL.BACKBONE.WEIGHTS``, which takes it.
    """
    from transformers import SegformerForSemanticSegmentation

    arch = hf_checkpoint_config(folder).get("architectures") or []
    if arch and not any("SemanticSegmentation" in a for a in arch):
        raise PretrainedWeightsError(
            f"{key} '{folder}' is a {arch[0]} checkpoint without SegFormer's decode head: give it as "
            f"MODEL.BACKBONE.WEIGHTS (the encoder's start), not as trained weights of the whole model"
        )
    hf = load_hf_pretrained(SegformerForSemanticSegmentation, folder, key)
    return prefixed_state(hf.state_dict(), {"segformer.": "backbone.encoder.", "decode_head.": "sem_seg_head.decode_head."})


HF_CHECKPOINT_CONVERTERS["segformer"] = convert_segformer_checkpoint
