"""Optimizer with parameter groups, gradient clipping, and the LR scheduler, from the config."""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
)
from torch import nn

from .lr_scheduler import LRMultiplier, WarmupParamScheduler

logger = logging.getLogger(__name__)

# Normalisation layers whose parameters take SOLVER.WEIGHT_DECAY_NORM.
NORM_MODULE_TYPES: Tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _lr_multiplier_for(name: str, rules: Sequence[Tuple[str, float]]) -> float:
    """The multiplier of the first rule whose prefix names ``name`` or one of its parents."""
    for prefix, mult in rules:
        if name == prefix or name.startswith(prefix + "."):
            return float(mult)
    return 1.0


def _network_prefix(model: nn.Module) -> str:
    """Where the network the config describes sits in ``model``: ``""`` for a plain model; the
    name (with a dot) of the submodule ``model.deploy_model()`` returns, inside a wrapper that
    trains it (the ``Distiller``'s ``"student."``)."""
    fn = getattr(model, "deploy_model", None)
    net = fn() if callable(fn) else model
    if net is model:
        return ""
    for name, m in model.named_modules():
        if m is net:
            return name + "."
    return ""


def _multiplier_rules(cfg, model: nn.Module) -> List[Tuple[str, float]]:
    """``SOLVER.LR_MULTIPLIERS`` first, then the model's ``lr_multipliers`` attribute.

    ``SOLVER.LR_MULTIPLIERS`` names parameters of the network the config describes
    (``MODEL.META_ARCHITECTURE``): inside a ``Distiller`` the same prefixes apply to its student
    (prefixed here with ``student.``), so a plain and a distillation config write the same rules.
    The model's own rules (the Distiller's: its KD modules and its student's own rules, which it
    prefixes) are full names.
    """
    prefix = _network_prefix(model)
    rules: List[Tuple[str, float]] = []
    for i, item in enumerate(cfg.SOLVER.LR_MULTIPLIERS):
        if len(item) != 2:
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS[{i}] must be [prefix, multiplier]; got {item!r}"
            )
        rules.append((prefix + str(item[0]), float(item[1])))
    names = [n for n, _ in model.named_parameters()]
    for (full, _), item in zip(rules, cfg.SOLVER.LR_MULTIPLIERS):
        # a configured prefix that matches nothing is a typo: fail loudly
        if not any(n == full or n.startswith(full + ".") for n in names):
            hint = ""
            if prefix and str(item[0]).startswith(prefix):
                hint = (f"; SOLVER.LR_MULTIPLIERS names the parameters of the config's network "
                        f"itself: write '{str(item[0])[len(prefix):]}', without '{prefix}'")
            top = sorted({n[len(prefix):].split(".")[0] for n in names if n.startswith(prefix)})
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS prefix '{item[0]}' matches no parameter of "
                f"{type(model).__name__}{' (its ' + prefix[:-1] + ')' if prefix else ''} "
                f"(parameter names start with: {', '.join(top)}){hint}"
            )
    model_rules = getattr(model, "lr_multipliers", None)
    if model_rules:
        if not isinstance(model_rules, Mapping):
            raise TypeError(
                f"{type(model).__name__}.lr_multipliers must be a dict {{prefix: multiplier}}; "
                f"got {type(model_rules).__name__}"
            )
        # The model's own rules may name modules without parameters in some configurations
        # (e.g. KD modules of parameter-free losses): no error for them.
        rules.extend((str(k), float(v)) for k, v in model_rules.items())
    return rules


@dataclass(frozen=True)
class OptimizerSpec:
    """Parameters that train with an optimizer of their own, on an objective of their own.

    A module declares them (``extra_optimizers()``, see :func:`extra_optimizer_specs`); the
    trainer builds the optimizer (:func:`build_extra_optimizers`), leaves the parameters out of
    the main one (:func:`build_optimizer`), differentiates the objective in the step's one
    backward pass (so DDP averages its gradients over processes as it does the student's), steps
    it after the main optimizer and saves its state in every checkpoint
    (``optimizer.<name>``). The learning rate is constant.

    Attributes:
        params: the parameters (each in one spec only, not in the main optimizer).
        objective: keys of the model's loss dict whose sum is their objective. The keys must not
            start with ``loss`` (those entries are the main objective); the objective must reach
            no parameter of the main optimizer and the main objective none of ``params`` (the
            trainer checks both at every step).
        optimizer: ``"Adam"``, ``"AdamW"`` or ``"SGD"``.
        lr, weight_decay: the optimizer's; ``betas`` (Adam, AdamW) and ``momentum`` (SGD).
    """

    params: Tuple[nn.Parameter, ...]
    objective: Tuple[str, ...]
    optimizer: str = "Adam"
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0
    weight_decay: float = 0.0


class ExtraOptimizer(NamedTuple):
    """A built :class:`OptimizerSpec`: the torch optimizer and the loss-dict keys it minimises."""

    optimizer: torch.optim.Optimizer
    objective: Tuple[str, ...]


def extra_optimizer_specs(model: nn.Module) -> Dict[str, OptimizerSpec]:
    """The optimizers ``model`` declares for some of its parameters: ``model.extra_optimizers()``
    (``{name: OptimizerSpec}``; e.g. the ``Distiller``'s, from its losses: APD's teacher adapter
    ``"apd.teacher_adapter"``), ``{}`` when the model has no such method.

    Raises:
        TypeError: the method returns something other than ``{str: OptimizerSpec}``.
        ValueError: a spec without parameters or objective, an objective key starting with
            ``loss``, a parameter that is not the model's, is frozen, or is in two specs.
    """
    fn = getattr(model, "extra_optimizers", None)
    specs = dict(fn()) if callable(fn) else {}
    owner: Dict[int, str] = {}
    mine = {id(p) for p in model.parameters()}
    for name, spec in specs.items():
        if not isinstance(name, str) or not isinstance(spec, OptimizerSpec):
            raise TypeError(
                f"{type(model).__name__}.extra_optimizers() must return {{str: OptimizerSpec}}; "
                f"got {name!r}: {type(spec).__name__}"
            )
        if not spec.params or not spec.objective:
            raise ValueError(f"Optimizer '{name}' declares no parameters or no objective")
        bad = [k for k in spec.objective if k.startswith("loss")]
        if bad:
            raise ValueError(
                f"Optimizer '{name}': objective entries {bad} start with 'loss', the prefix of the "
                "main objective; name them otherwise"
            )
        for p in spec.params:
            if id(p) not in mine or not p.requires_grad:
                raise ValueError(
                    f"Optimizer '{name}' declares a parameter that is not a trainable parameter "
                    f"of {type(model).__name__}"
                )
            if id(p) in owner:
                raise ValueError(f"A parameter is declared by both optimizers '{owner[id(p)]}' and '{name}'")
            owner[id(p)] = name
    return specs


def build_extra_optimizers(cfg, model: nn.Module) -> Dict[str, ExtraOptimizer]:
    """One optimizer per :func:`extra_optimizer_specs` entry of ``model`` (the unwrapped model).

    Raises:
        ValueError: an unknown ``OptimizerSpec.optimizer``.
    """
    out: Dict[str, ExtraOptimizer] = {}
    for name, spec in extra_optimizer_specs(model).items():
        params = list(spec.params)
        kind = spec.optimizer
        if kind == "Adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)
        elif kind == "AdamW":
            opt = torch.optim.AdamW(params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)
        elif kind == "SGD":
            opt = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
        else:
            raise ValueError(f"Optimizer '{name}': unknown optimizer '{kind}'; use Adam, AdamW or SGD")
        out[name] = ExtraOptimizer(opt, tuple(spec.objective))
    return out


def get_default_optimizer_params(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_bias: Optional[float] = None,
    bias_lr_factor: float = 1.0,
    lr_multipliers: Sequence[Tuple[str, float]] = (),
    exclude: Iterable[nn.Parameter] = (),
) -> List[Dict[str, Any]]:
    """Parameter groups of the trainable parameters of ``model``.

    Each parameter gets ``lr = base_lr * (bias_lr_factor if bias) * multiplier(name)`` and
    ``weight_decay`` (``weight_decay_norm`` inside a normalisation layer, ``weight_decay_bias``
    for biases when given). Parameters with ``requires_grad=False`` (frozen stages, a
    distillation teacher) are left out, and so are ``exclude`` (those another optimizer trains,
    :class:`OptimizerSpec`); a parameter shared by two modules is counted once.
    Parameters with equal hyper-parameters are merged into one group.

    Returns:
        A list of ``{"params": [...], "lr": float, "weight_decay": float}``.
    """
    seen = {id(p) for p in exclude}
    by_hparams: Dict[Tuple[float, float], List[nn.Parameter]] = defaultdict(list)
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            lr = base_lr * _lr_multiplier_for(full_name, lr_multipliers)
            wd = weight_decay
            if isinstance(module, NORM_MODULE_TYPES):
                wd = weight_decay_norm
            elif param_name == "bias" and weight_decay_bias is not None:
                wd = weight_decay_bias
            if param_name == "bias":
                lr *= bias_lr_factor
            by_hparams[(lr, wd)].append(param)
    if not by_hparams:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True")
    return [
        {"params": params, "lr": lr, "weight_decay": wd}
        for (lr, wd), params in by_hparams.items()
    ]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW (``SOLVER.OPTIMIZER``) over the parameter groups of ``model``: every
    trainable parameter but those the model gives an optimizer of their own
    (:func:`extra_optimizer_specs`).

    ``model`` is the unwrapped model (not DDP), so prefixes are its own parameter names.
    """
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        lr_multipliers=_multiplier_rules(cfg, model),
        exclude=[p for spec in extra_optimizer_specs(model).values() for p in spec.params],
    )
    name = cfg.SOLVER.OPTIMIZER
    if name == "SGD":
        return torch.optim.SGD(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
        )
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS))
    raise ValueError(f"Unknown SOLVER.OPTIMIZER '{name}'; use 'SGD' or 'AdamW'")


def build_gradient_clipper(cfg) -> Optional[Callable[[Iterable[torch.Tensor]], None]]:
    """A function clipping gradients in place (``SOLVER.CLIP_GRADIENTS``), or None when off."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    if clip.CLIP_TYPE == "norm":
        return lambda params: torch.nn.utils.clip_grad_norm_(
            params, clip.CLIP_VALUE, clip.NORM_TYPE
        )
    if clip.CLIP_TYPE == "value":
        return lambda params: torch.nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
    raise ValueError(
        f"Unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE '{clip.CLIP_TYPE}'; use 'norm' or 'value'"
    )


def build_lr_multiplier(cfg) -> ParamScheduler:
    """The LR multiplier as a function of ``where = iter / MAX_ITER`` (warm-up included)."""
    name = cfg.SOLVER.LR_SCHEDULER_NAME
    max_iter = cfg.SOLVER.MAX_ITER
    if name == "WarmupMultiStepLR":
        steps = [s for s in cfg.SOLVER.STEPS if s <= max_iter]
        if len(steps) != len(cfg.SOLVER.STEPS):
            logger.warning(
                f"SOLVER.STEPS {tuple(cfg.SOLVER.STEPS)} has steps beyond MAX_ITER={max_iter}; "
                "they are ignored"
            )
        sched: ParamScheduler = MultiStepParamScheduler(
            values=[cfg.SOLVER.GAMMA**k for k in range(len(steps) + 1)],
            milestones=steps,
            num_updates=max_iter,
        )
    elif name == "WarmupCosineLR":
        sched = CosineParamScheduler(1.0, cfg.SOLVER.COSINE_END_LR_FACTOR)
    elif name == "WarmupPolyLR":
        sched = PolynomialDecayParamScheduler(1.0, cfg.SOLVER.POLY_POWER)
    else:
        raise ValueError(
            f"Unknown SOLVER.LR_SCHEDULER_NAME '{name}'; use WarmupMultiStepLR, WarmupCosineLR "
            "or WarmupPolyLR"
        )
    if cfg.SOLVER.WARMUP_ITERS <= 0:
        return sched
    return WarmupParamScheduler(
        sched,
        cfg.SOLVER.WARMUP_FACTOR,
        cfg.SOLVER.WARMUP_ITERS / max_iter,
        cfg.SOLVER.WARMUP_METHOD,
    )


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """The per-iteration LR scheduler of ``cfg.SOLVER`` for ``optimizer``."""
    return LRMultiplier(optimizer, build_lr_multiplier(cfg), cfg.SOLVER.MAX_ITER)
