"""The BCD distillation signals of one image, for pictures (``tools/visualize.py``, ``kd_report``).

:func:`bcd_signals` runs a trained :class:`~bcd.distill.distiller.Distiller` on one image with its
feature recorders on (the same features its losses read in training) and evaluates, with the
loss modules' own trained parts and public functions:

* boundary (``KD.LOSSES`` has ``BoundaryDistillation``): the student's boundary map
  ``sigmoid(conv_s(HFA_S(student features)))`` and the teacher's ``sigmoid(conv_t(HFA_T(teacher
  features)))`` (the student's head on the teacher features for ``shared_stopgrad``), on the
  ``1/KD.BCD_HFA.STRIDE`` grid of the padded input;
* context (``ContextDistillation``): for one pixel ``i``, the relation rows ``R_S[i]`` and
  ``R_T[i]`` (softmax over the valid tokens of ``scale · x_i · x_jᵀ``, ``scale`` from
  :func:`~bcd.distill.losses.bcd_context.relation_scale` at the loss's current τ), after the
  loss's token cap (:func:`~bcd.distill.losses.bcd_context.cap_tokens`) and student projection
  ``φ_S``: the distributions whose KL the context loss takes.

Nothing here changes the model: eval mode, no gradient, the mode restored.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses.base import as_tensor_feature
from .losses.bcd_boundary import BoundaryDistillation
from .losses.bcd_context import ContextDistillation, cap_tokens, relation_scale
from .losses.bcd_hfa import FixedProjectionHFA, IdentityHFA, grid_size

__all__ = ["bcd_signals", "signal_panels"]


def _find(distiller, cls) -> Optional[Any]:
    for loss in distiller.kd_losses.values():
        if isinstance(loss, cls):
            return loss
    return None


@torch.no_grad()
def bcd_signals(distiller, inputs: List[Dict[str, Any]], pixel: Optional[Tuple[float, float]] = None) -> Dict[str, Any]:
    """Boundary maps and one pixel's context-relation rows of the first image of ``inputs``.

    Args:
        distiller: a ``Distiller`` with ``BoundaryDistillation`` and / or ``ContextDistillation``.
        inputs: mapper-style dicts (``image`` uint8 ``3×H×W``); only the first is used.
        pixel: ``(y, x)`` as fractions of the image (0..1) for the relation row; default the
            valid token with the largest teacher boundary value, else the centre.

    Returns:
        ``{"image_size": (H, W) of the padded input, "boundary_student" / "boundary_teacher":
        h×w float arrays in [0, 1], "boundary_grid": (h, w), "relation_student" /
        "relation_teacher": h'×w' arrays summing to 1, "relation_grid": (h', w'),
        "pixel": (y', x') on that grid, "tau": {"boundary": τ, "context": τ}}``; keys of a loss
        the distiller does not have are absent.

    Raises:
        ValueError: when the distiller has neither BCD loss.
    """
    bd = _find(distiller, BoundaryDistillation)
    cd = _find(distiller, ContextDistillation)
    if bd is None and cd is None:
        raise ValueError("bcd_signals: KD.LOSSES has neither BoundaryDistillation nor ContextDistillation")
    was = distiller.training
    distiller.eval()
    try:
        one = [inputs[0]]
        batch_s = distiller.student.preprocess(one)
        batch_t = distiller.teacher.preprocess(one)
        with distiller.student_recorder.recording(), distiller.teacher_recorder.recording():
            distiller.teacher.extract(batch_t)
            distiller.student.extract(batch_s)
            s_feats = distiller.student_recorder.collect()
            t_feats = distiller.teacher_recorder.collect()
        out: Dict[str, Any] = {"image_size": tuple(batch_s.tensor.shape[-2:]), "tau": {}}
        t_bound: Optional[Tensor] = None
        if bd is not None:
            s_list = [as_tensor_feature(s_feats[n], n) for n in bd.student_features]
            t_list = [as_tensor_feature(t_feats[n], n) for n in bd.teacher_features]
            size = grid_size(batch_s.tensor.shape[-2:], bd.stride)
            s_logit = bd.conv_s(bd.hfa_s(s_list, size))
            if bd.hfa_t is None:  # shared_stopgrad: the student's head on the teacher features
                t_logit = bd.conv_s(bd.hfa_s(t_list, size))
            else:
                t_logit = bd.conv_t(bd.hfa_t(t_list, size))
            t_bound = torch.sigmoid(t_logit[0, 0].float())
            out.update(boundary_student=torch.sigmoid(s_logit[0, 0].float()).cpu().numpy(),
                       boundary_teacher=t_bound.cpu().numpy(), boundary_grid=tuple(size))
            out["tau"]["boundary"] = float(bd.temperature.value)
        if cd is not None:
            s_list = [as_tensor_feature(s_feats[n], n) for n in cd.student_features]
            t_list = [as_tensor_feature(t_feats[n], n) for n in cd.teacher_features]
            size = grid_size(batch_s.tensor.shape[-2:], cd.stride)
            valid = batch_s.valid_mask(size)
            f_s = cd.hfa_s(s_list, size)
            if cd.hfa_t is None:
                f_t = cd.hfa_s(t_list, size)
            elif isinstance(cd.hfa_t, (FixedProjectionHFA, IdentityHFA)):
                f_t = cd.hfa_t(t_list, size, valid)
            else:
                f_t = cd.hfa_t(t_list, size)
            f_s, valid_c = cap_tokens(f_s, valid, int(cd.node.TOKEN_CAP))
            f_t, _ = cap_tokens(f_t, valid, int(cd.node.TOKEN_CAP))
            z_s = cd.phi_s(f_s)
            hc, wc = z_s.shape[-2:]
            x_s = z_s.flatten(2).transpose(1, 2)[0].float()  # N×C
            x_t = f_t.flatten(2).transpose(1, 2)[0].float()
            if cd.node.RELATION == "cosine":
                x_s, x_t = F.normalize(x_s, dim=-1), F.normalize(x_t, dim=-1)
            tau = float(cd.temperature.value)
            scale = relation_scale(x_s.shape[-1], tau, cd.node.RELATION, float(cd.node.COS_TAU))
            v = valid_c[0].flatten()
            if pixel is not None:
                py = min(hc - 1, max(0, int(pixel[0] * hc)))
                px = min(wc - 1, max(0, int(pixel[1] * wc)))
            elif t_bound is not None:
                # the pixel the teacher finds most boundary-like: its row shows the context
                # the student should match across an object edge
                tb = F.adaptive_max_pool2d(t_bound[None, None], (hc, wc))[0, 0].flatten()
                tb = tb.masked_fill(~v, -1.0)
                py, px = divmod(int(tb.argmax()), wc)
            else:
                py, px = hc // 2, wc // 2
            i = py * wc + px
            rows = {}
            for side, x in (("student", x_s), ("teacher", x_t)):
                logits = (x[i] @ x.t()) * scale
                rows[side] = torch.softmax(logits.masked_fill(~v, float("-inf")), dim=0).reshape(hc, wc)
            out.update(relation_student=rows["student"].cpu().numpy(), relation_teacher=rows["teacher"].cpu().numpy(),
                       relation_grid=(int(hc), int(wc)), pixel=(int(py), int(px)))
            out["tau"]["context"] = tau
        return out
    finally:
        distiller.train(was)


def signal_panels(sig: Dict[str, Any], image: Tensor) -> List[Any]:
    """Panels (``bcd.utils.visualizer.Panel``) of :func:`bcd_signals`' output for the model input
    ``image`` (``3×h×w`` uint8): the image (zero-padded like the model's input, the relation
    pixel circled), the teacher's and student's boundary maps, the teacher's and student's
    relation rows over the image."""
    import numpy as np

    from bcd.utils.visualizer import Panel

    H, W = sig["image_size"]
    img = image.detach().cpu().numpy().transpose(1, 2, 0).astype(np.uint8)
    padded = np.zeros((H, W, 3), np.uint8)
    padded[: img.shape[0], : img.shape[1]] = img[:H, :W]
    panels = [Panel("image (model input)", "image", image=padded)]
    if "boundary_teacher" in sig:
        tau = sig["tau"]["boundary"]
        panels += [Panel("teacher boundary", "heatmap", heat=sig["boundary_teacher"], vmin=0, vmax=1),
                   Panel(f"student boundary (τ {tau:.2g})", "heatmap", heat=sig["boundary_student"], vmin=0, vmax=1)]
    if "relation_teacher" in sig:
        hc, wc = sig["relation_grid"]
        py, px = sig["pixel"]
        mark = ((py + 0.5) * H / hc - 0.5, (px + 0.5) * W / wc - 0.5)  # the token's centre in pixels
        vmax = float(max(sig["relation_teacher"].max(), sig["relation_student"].max()))
        panels[0].mark = mark
        for side in ("teacher", "student"):
            panels.append(Panel(f"{side} relation row (τ {sig['tau']['context']:.2g})", "heatmap",
                                heat=sig[f"relation_{side}"], image=padded, mark=mark, vmin=0.0, vmax=vmax,
                                cmap="viridis"))
    return panels
