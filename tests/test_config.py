"""Hyperparameter and run-folder handling: bad input fails at start-up with the field named."""
from __future__ import annotations

import pytest

from utils.config import ConfigError, load_hyp, load_yaml
from utils.paths import increment_path, new_run_dir


def test_default_hyp_has_the_paper_recipe():
    hyp = load_hyp()
    assert hyp["lr0"] == 0.01 and hyp["momentum"] == 0.937 and hyp["obj_balance"] == [4.0, 1.0, 0.4]
    assert (hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], hyp["scale"], hyp["mixup"]) == (0.015, 0.7, 0.4, 0.9, 0.1)


def test_user_hyp_overrides_and_errors(tmp_path):
    good = tmp_path / "h.yaml"
    good.write_text("lr0: 0.02\nmosaic: 0.5\n")
    hyp = load_hyp(good)
    assert hyp["lr0"] == 0.02 and hyp["mosaic"] == 0.5 and hyp["momentum"] == 0.937
    (tmp_path / "u.yaml").write_text("lr_0: 0.02\n")
    with pytest.raises(ConfigError, match=r"u.yaml: unknown hyperparameter 'lr_0'"):
        load_hyp(tmp_path / "u.yaml")
    (tmp_path / "t.yaml").write_text("lr0: fast\n")
    with pytest.raises(ConfigError, match=r"t.yaml: hyperparameter 'lr0' must be a number"):
        load_hyp(tmp_path / "t.yaml")
    (tmp_path / "b.yaml").write_text("lr0: [0.1\n")
    with pytest.raises(ConfigError, match=r"b.yaml line \d+: invalid YAML"):
        load_yaml(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_hyp(tmp_path / "missing.yaml")


def test_run_dirs_increment(tmp_path):
    assert new_run_dir(tmp_path, "exp").name == "exp"
    assert new_run_dir(tmp_path, "exp").name == "exp2"
    assert new_run_dir(tmp_path, "exp").name == "exp3"
    assert new_run_dir(tmp_path, "exp", exist_ok=True).name == "exp"
    assert increment_path(tmp_path / "other") == tmp_path / "other"
