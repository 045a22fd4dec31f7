"""SegFormer's Mix Transformer encoder (MiT-B0 .. B5; Xie et al., *SegFormer*, NeurIPS 2021) on
Hugging Face ``transformers``' model code (``SegformerModel``).

The four encoder stages (overlapping patch embedding, efficient self-attention with sequence
reduction, Mix-FFN, layer norm) give ``B×C_i×H/s×W/s`` maps at strides 4, 8, 16, 32; they are
returned as ``res2`` .. ``res5`` and pass through ``nn.Identity`` modules of those names, so
forward hooks on ``backbone.res3`` work as for the convolutional backbones (``stem`` sees the
input image: MiT has no stride-2 level). ``MODEL.BACKBONE.WEIGHTS`` takes a transformers
checkpoint of the encoder: ``hf://nvidia/mit-b0`` (ImageNet-1k, the SegFormer recipe's start) ..
``hf://nvidia/mit-b5``, any SegFormer checkpoint (its encoder part), or a local
``save_pretrained`` folder. The decode head is ``bcd/modeling/heads/segformer.py``.

Variants (SegFormer Table 6 / ``transformers``' ``nvidia/mit-b*`` configs): hidden sizes
``[32, 64, 160, 256]`` (B0) or ``[64, 128, 320, 512]`` (B1-B5); depths B0 / B1 ``[2, 2, 2, 2]``,
B2 ``[3, 4, 6, 3]``, B3 ``[3, 4, 18, 3]``, B4 ``[3, 8, 27, 3]``, B5 ``[3, 6, 40, 3]``; attention
heads ``[1, 2, 5, 8]``, reduction ratios ``[8, 4, 2, 1]``, patch sizes ``[7, 3, 3, 3]``, strides
``[4, 2, 2, 2]``, MLP ratio 4 for all. The decoder width that goes with them (``MODEL.SEM_SEG_HEAD.CHANNELS``)
is 256 for B0 / B1 and 768 for B2-B5.
"""
from __future__ import annotations

from typing import Dict, Sequence

from torch import Tensor, nn

from .backbone import STAGE_NAMES, Backbone, check_stage_names
from .build import BACKBONE_REGISTRY
from .weights import PretrainedWeightsError

__all__ = ["MIT_VARIANTS", "MiTBackbone", "build_mit_backbone", "mit_config"]

_SMALL = [32, 64, 160, 256]
_LARGE = [64, 128, 320, 512]
#: variant -> (hidden sizes, depths, SegFormer decoder width)
MIT_VARIANTS: Dict[str, tuple] = {
    "b0": (_SMALL, [2, 2, 2, 2], 256),
    "b1": (_LARGE, [2, 2, 2, 2], 256),
    "b2": (_LARGE, [3, 4, 6, 3], 768),
    "b3": (_LARGE, [3, 4, 18, 3], 768),
    "b4": (_LARGE, [3, 8, 27, 3], 768),
    "b5": (_LARGE, [3, 6, 40, 3], 768),
}
# what an ImageNet / SegFormer checkpoint must agree on to fit a variant
_ARCH_KEYS = ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios", "patch_sizes", "strides",
              "mlp_ratios", "num_encoder_blocks")


def mit_config(variant: str, drop_path_rate: float = 0.1, **overrides):
    """The ``transformers.SegformerConfig`` of MiT-``variant`` (``"b0"`` .. ``"b5"``).

    ``drop_path_rate`` (stochastic depth, linearly increasing over the blocks) is SegFormer's
    0.1; ``overrides`` are further ``SegformerConfig`` fields (the decode head's ``num_labels``,
    ``decoder_hidden_size``, ``classifier_dropout_prob``).

    Raises:
        ValueError: an unknown variant, naming ``MODEL.SEGFORMER.VARIANT`` and the valid ones.
    """
    from transformers import SegformerConfig

    v = str(variant).lower()
    if v not in MIT_VARIANTS:
        raise ValueError(f"MODEL.SEGFORMER.VARIANT must be one of {sorted(MIT_VARIANTS)}; got '{variant}'")
    hidden, depths, decoder = MIT_VARIANTS[v]
    kwargs = dict(
        num_channels=3, num_encoder_blocks=4, depths=list(depths), sr_ratios=[8, 4, 2, 1],
        hidden_sizes=list(hidden), patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
        num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.1,
        drop_path_rate=float(drop_path_rate), layer_norm_eps=1e-6, decoder_hidden_size=decoder,
        reshape_last_stage=True,
    )
    kwargs.update(overrides)
    return SegformerConfig(**kwargs)


class MiTBackbone(Backbone):
    """``transformers.SegformerModel`` (MiT-``variant``) with its stage outputs named ``res2`` ..
    ``res5``.

    Args:
        variant: ``"b0"`` .. ``"b5"``.
        drop_path_rate: stochastic depth of the encoder (SegFormer: 0.1).
        out_features: the names ``forward`` returns.

    Named modules: ``encoder`` (the ``SegformerModel``; its state dict is ``transformers``'
    ``segformer.*``), ``stem`` (identity on the input), ``res2`` .. ``res5`` (identity on each
    stage's output).
    """

    def __init__(self, variant: str = "b0", drop_path_rate: float = 0.1,
                 out_features: Sequence[str] = STAGE_NAMES) -> None:
        super().__init__()
        from transformers import SegformerModel

        check_stage_names(out_features, "MODEL.SEGFORMER out_features")
        self.config = mit_config(variant, drop_path_rate)
        self.variant = str(variant).lower()
        self.encoder = SegformerModel(self.config)
        self.stem = nn.Identity()
        for i, name in enumerate(STAGE_NAMES):
            self.add_module(name, nn.Identity())
            self._out_feature_channels[name] = int(self.config.hidden_sizes[i])
            self._out_feature_strides[name] = 4 * 2**i
        self._out_features = list(out_features)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """``B×3×H×W`` -> ``{res2..res5: B×C_i×⌈H/s⌉×⌈W/s⌉}`` (s = 4, 8, 16, 32)."""
        self.stem(x)
        hidden = self.encoder(pixel_values=x, output_hidden_states=True).hidden_states
        out = {n: getattr(self, n)(h) for n, h in zip(STAGE_NAMES, hidden)}
        return {n: out[n] for n in self._out_features}

    def load_pretrained(self, path: str) -> None:
        """Load the encoder of a transformers checkpoint (``hf://nvidia/mit-b0``, a SegFormer
        checkpoint, a ``save_pretrained`` folder) strictly.

        Raises:
            FileNotFoundError: an unresolvable ``hf://`` name (names the repo and the cache).
            PretrainedWeightsError: another architecture (names the differing config fields) or
                missing / mis-shaped weights.
        """
        from transformers import SegformerModel

        from ..hf_checkpoint import load_hf_pretrained
        from ...utils.state_dict import state_dict_mismatch

        pretrained = load_hf_pretrained(SegformerModel, path, "MODEL.BACKBONE.WEIGHTS")

        def norm(v):
            return list(v) if isinstance(v, (list, tuple)) else v

        differ = {
            k: (norm(getattr(pretrained.config, k, None)), norm(getattr(self.config, k)))
            for k in _ARCH_KEYS
            if norm(getattr(pretrained.config, k, None)) != norm(getattr(self.config, k))
        }
        if differ:
            raise PretrainedWeightsError(
                f"MODEL.BACKBONE.WEIGHTS '{path}' is not a MiT-{self.variant} encoder "
                f"(MODEL.SEGFORMER.VARIANT): " + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items())
            )
        state = pretrained.state_dict()
        problem = state_dict_mismatch(self.encoder.state_dict(), state)
        if problem:
            raise PretrainedWeightsError(f"MODEL.BACKBONE.WEIGHTS '{path}' does not fit MiT-{self.variant}: {problem}")
        self.encoder.load_state_dict(state, strict=True)


@BACKBONE_REGISTRY.register()
def build_mit_backbone(cfg) -> MiTBackbone:
    """MiT of ``MODEL.SEGFORMER`` (``VARIANT``, ``DROP_PATH_RATE``), loading
    ``MODEL.BACKBONE.WEIGHTS`` when set. MiT uses layer norms only (``MODEL.BACKBONE.NORM`` does
    not apply); ``FREEZE_AT`` is refused (not supported)."""
    s, b = cfg.MODEL.SEGFORMER, cfg.MODEL.BACKBONE
    if b.FREEZE_AT:
        raise ValueError("MODEL.BACKBONE.FREEZE_AT is not supported by build_mit_backbone; set it to 0")
    model = MiTBackbone(s.VARIANT, s.DROP_PATH_RATE)
    if b.WEIGHTS:
        model.load_pretrained(b.WEIGHTS)
    return model
