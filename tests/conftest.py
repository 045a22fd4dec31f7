"""Shared test settings: one CPU thread per test process unless BCD_TEST_THREADS says otherwise
(tiny tensors gain nothing from threads, and threads contend on a few shared cores)."""
import os

import pytest
import torch

# Tests use tiny tensors: extra threads only add contention on a shared machine.
torch.set_num_threads(int(os.environ.get("BCD_TEST_THREADS", "1")))


@pytest.fixture
def cfg():
    """A fresh default config."""
    from bcd.config import get_cfg

    return get_cfg()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache of the test's own (``huggingface_hub.constants.HF_HUB_CACHE``),
    downloads off (``BCD_OFFLINE=1``) and a download function that fails the test if called.

    Returns ``put(repo_id, folder) -> snapshot folder``: copies a ``save_pretrained`` folder into
    the cache's layout (``models--<org>--<name>/snapshots/<commit>/``, ``refs/main``), as
    ``huggingface_hub.snapshot_download`` leaves it. ``put.cache`` is the cache folder."""
    import shutil

    from huggingface_hub import constants

    from bcd.modeling.backbone import weights as W

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv(W.OFFLINE_ENV, "1")

    def no_network(repo_id, revision, cache_dir):
        raise AssertionError(f"a test tried to download {repo_id}")

    monkeypatch.setattr(W, "_hf_download", no_network)

    def put(repo_id: str, folder: str, commit: str = "0" * 40) -> str:
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        snap = repo / "snapshots" / commit
        shutil.copytree(folder, snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return str(snap)

    put.cache = str(cache)
    return put
