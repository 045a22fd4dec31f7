"""Config: _BASE_ chains (relative to each file), overrides, strict keys, round trip."""
from __future__ import annotations

import textwrap

import pytest

from bcd.config import get_cfg


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def chain(tmp_path):
    """top.yaml -> sub/mid.yaml -> ../base/Base.yaml (each _BASE_ relative to its own file)."""
    _write(tmp_path / "base" / "Base.yaml", """
        MODEL:
          META_ARCHITECTURE: "SemanticSegmentor"
          RESNETS:
            DEPTH: 101
        SOLVER:
          BASE_LR: 0.1
          MAX_ITER: 100
          STEPS: (60, 80)
        INPUT:
          CROP:
            SIZE: [256, 256]
        """)
    _write(tmp_path / "sub" / "mid.yaml", """
        _BASE_: "../base/Base.yaml"
        SOLVER:
          MAX_ITER: 200
        MODEL:
          RESNETS:
            DEPTH: 50
        """)
    return _write(tmp_path / "top.yaml", """
        _BASE_: "sub/mid.yaml"
        SOLVER:
          BASE_LR: 0.02
        OUTPUT_DIR: "./out/top"
        """)


def test_base_chain_of_two_levels_merges_like_detectron2(chain):
    cfg = get_cfg()
    cfg.merge_from_file(chain)
    assert cfg.SOLVER.BASE_LR == 0.02  # top overrides base
    assert cfg.SOLVER.MAX_ITER == 200  # mid overrides base
    assert cfg.MODEL.RESNETS.DEPTH == 50  # mid overrides base, inside a nested node
    assert tuple(cfg.SOLVER.STEPS) == (60, 80)  # from base only
    assert list(cfg.INPUT.CROP.SIZE) == [256, 256]
    assert cfg.OUTPUT_DIR == "./out/top"
    # Keys set nowhere keep the defaults, including siblings of merged keys.
    defaults = get_cfg()
    assert cfg.SOLVER.MOMENTUM == defaults.SOLVER.MOMENTUM
    assert cfg.MODEL.RESNETS.OUTPUT_STRIDE == defaults.MODEL.RESNETS.OUTPUT_STRIDE
    assert cfg.INPUT.CROP.ENABLED == defaults.INPUT.CROP.ENABLED
    assert "_BASE_" not in cfg


def test_command_line_overrides_apply_after_files(chain):
    cfg = get_cfg()
    cfg.merge_from_file(chain)
    cfg.merge_from_list(["SOLVER.MAX_ITER", "7", "SOLVER.STEPS", "(3, 5)",
                         "DATASETS.TRAIN", "('a', 'b')", "SOLVER.LR_MULTIPLIERS", "[['head', 10.0]]"])
    assert cfg.SOLVER.MAX_ITER == 7 and isinstance(cfg.SOLVER.MAX_ITER, int)
    assert tuple(cfg.SOLVER.STEPS) == (3, 5)
    assert tuple(cfg.DATASETS.TRAIN) == ("a", "b")
    assert cfg.SOLVER.LR_MULTIPLIERS == [["head", 10.0]]
    assert cfg.SOLVER.BASE_LR == 0.02


def test_unknown_keys_fail_naming_the_key_and_closest(tmp_path, chain):
    bad = _write(tmp_path / "bad.yaml", """
        _BASE_: "top.yaml"
        SOLVER:
          BASE_LRR: 0.1
        """)
    with pytest.raises(KeyError) as e:
        get_cfg().merge_from_file(bad)
    assert "SOLVER.BASE_LRR" in str(e.value) and "SOLVER.BASE_LR" in str(e.value)
    assert "bad.yaml" in str(e.value)

    bad_in_base = _write(tmp_path / "base2.yaml", """
        MODEL:
          RESNET:
            DEPTH: 18
        """)
    child = _write(tmp_path / "child.yaml", '_BASE_: "base2.yaml"\n')
    with pytest.raises(KeyError, match=r"'MODEL\.RESNET'.*closest valid keys: MODEL\.RESNETS"):
        get_cfg().merge_from_file(child)

    with pytest.raises(KeyError, match="SOLVER.MAX_ITERS.*SOLVER.MAX_ITER"):
        get_cfg().merge_from_list(["SOLVER.MAX_ITERS", "10"])
    with pytest.raises(ValueError, match="KEY VALUE"):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER"])


def test_wrong_value_type_is_an_error():
    with pytest.raises(ValueError):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER", "'many'"])


def test_dump_round_trip(chain, tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(chain)
    path = _write(tmp_path / "dumped.yaml", cfg.dump())
    again = get_cfg()
    again.merge_from_file(path)
    assert again == cfg


def test_every_kd_key_is_declared_by_kd_defaults_alone():
    """``add_kd_config`` on a bare node gives the whole ``KD`` node exactly as ``get_cfg()`` has
    it, every registered loss's ``KD.<CONFIG_KEY>`` included (nothing added elsewhere, e.g. in
    defaults.py): a Detectron2 project adds all KD keys to its own CfgNode with that function."""
    from bcd.config import CfgNode as CN
    from bcd.config.kd_defaults import add_kd_config
    from bcd.distill.losses import KD_LOSS_REGISTRY

    bare = CN()
    add_kd_config(bare)
    full = get_cfg()
    assert list(bare) == ["KD"] and bare.KD == full.KD
    keys = {cls.CONFIG_KEY for _, cls in KD_LOSS_REGISTRY}
    assert {"APD", "PIXEL_KD", "BOUNDARY", "CONTEXT", "CWD"} <= keys <= set(bare.KD)
