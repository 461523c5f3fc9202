"""Hyperparameter and run-folder handling: bad input fails at start-up with the field named."""
from __future__ import annotations

import pytest

from conftest import require_shared
from utils.errors import CheckpointError, ConfigError
from engine.config import Hyp
from utils.io import load_yaml
from utils.paths import increment_path, new_run_dir, newest


def test_default_hyp_has_the_paper_recipe():
    hyp = Hyp.load().as_dict()
    assert hyp["lr0"] == 0.01 and hyp["momentum"] == 0.937 and hyp["obj_balance"] == [4.0, 1.0, 0.4]
    assert (hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], hyp["scale"], hyp["mixup"]) == (0.015, 0.7, 0.4, 0.9, 0.1)


def test_user_hyp_overrides_and_errors(tmp_path):
    good = tmp_path / "h.yaml"
    good.write_text("lr0: 0.02\nmosaic: 0.5\n")
    hyp = Hyp.load(good).as_dict()
    assert hyp["lr0"] == 0.02 and hyp["mosaic"] == 0.5 and hyp["momentum"] == 0.937
    (tmp_path / "u.yaml").write_text("lr_0: 0.02\n")
    with pytest.raises(ConfigError, match=r"u.yaml: unknown hyperparameter 'lr_0'"):
        Hyp.load(tmp_path / "u.yaml").as_dict()
    (tmp_path / "t.yaml").write_text("lr0: fast\n")
    with pytest.raises(ConfigError, match=r"t.yaml: hyperparameter 'lr0' must be a number"):
        Hyp.load(tmp_path / "t.yaml").as_dict()
    (tmp_path / "b.yaml").write_text("lr0: [0.1\n")
    with pytest.raises(ConfigError, match=r"b.yaml line \d+: invalid YAML"):
        load_yaml(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match="not found"):
        Hyp.load(tmp_path / "missing.yaml").as_dict()


@pytest.mark.parametrize("name", ["yolov5-hyp.scratch-low.yaml", "yolov7-hyp.scratch.p5.yaml",
                                  "yolov7-seg-hyp.scratch-high.yaml"])
def test_official_hyp_files_load_as_they_are(official, name, caplog):
    """Keys without effect here are named in one warning; the file's values win; keys it lacks
    keep the defaults."""
    path = require_shared(official / "hyp" / name, "official hyp file")
    official = load_yaml(path)
    with caplog.at_level("WARNING", logger="gradpath.config"):
        hyp = Hyp.load(path).as_dict()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    inert = [k for k in ("iou_t", "anchors", "loss_ota", "paste_in") if k in official]
    assert len(warnings) == 1 and all(k in warnings[0] for k in inert) and "ignored" in warnings[0]
    assert not any(k in hyp for k in inert)
    assert all(hyp[k] == v for k, v in official.items() if k not in inert)
    assert hyp["nominal_batch"] == 64 and hyp["obj_balance"] == [4.0, 1.0, 0.4]
    # the official scripts' minimum warmup: YOLOv7 main's train.py 1000 batches, YOLOv5's and u7 seg's 100
    assert hyp["warmup_min_iters"] == (1000 if name == "yolov7-hyp.scratch.p5.yaml" else 100)


def test_a_yolov7_hyp_file_that_sets_its_warmup_minimum_keeps_it(tmp_path):
    (tmp_path / "h.yaml").write_text("loss_ota: 1\nwarmup_min_iters: 50\n")
    assert Hyp.load(tmp_path / "h.yaml").as_dict()["warmup_min_iters"] == 50
    (tmp_path / "v7.yaml").write_text("loss_ota: 1\nlr0: 0.01\n")
    assert Hyp.load(tmp_path / "v7.yaml").as_dict()["warmup_min_iters"] == 1000


def test_inert_keys_do_not_hide_typos(tmp_path, caplog):
    (tmp_path / "h.yaml").write_text("iou_t: 0.2\nloss_ota: 1\nwarmup_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"h.yaml: unknown hyperparameter 'warmup_epoch'"):
        Hyp.load(tmp_path / "h.yaml").as_dict()
    (tmp_path / "ok.yaml").write_text("lr0: 0.02\n")
    with caplog.at_level("WARNING", logger="gradpath.config"):
        Hyp.load(tmp_path / "ok.yaml").as_dict()
    assert not caplog.records  # nothing to warn about in a file of our own keys


def test_run_dirs_increment(tmp_path):
    assert new_run_dir(tmp_path, "exp").name == "exp"
    assert new_run_dir(tmp_path, "exp").name == "exp2"
    assert new_run_dir(tmp_path, "exp").name == "exp3"
    assert new_run_dir(tmp_path, "exp", exist_ok=True).name == "exp"
    assert increment_path(tmp_path / "other") == tmp_path / "other"


def test_newest_run_file(tmp_path):
    """The last-modified match wins whatever the names' order; none is None, or the error --resume needs."""
    import os

    for name, mtime in (("exp", 300), ("exp2", 100), ("exp10", 200)):
        path = tmp_path / name / "weights/last.pt"
        path.parent.mkdir(parents=True)
        path.touch()
        os.utime(path, (mtime, mtime))
    assert newest("*/weights/last.pt", tmp_path) == tmp_path / "exp/weights/last.pt"
    assert newest("*/weights/best.pt", tmp_path) is None
    with pytest.raises(CheckpointError, match=r"--resume: no .*/\*/weights/best.pt found"):
        newest("*/weights/best.pt", tmp_path, required_by="--resume")


def test_hyp_values_are_typed_and_in_range(tmp_path):
    """A value of the wrong type or outside its range is one error naming the file and the key."""
    for text, message in [("mosaic: 1.5\n", r"h.yaml: hyperparameter 'mosaic' must be in \[0.0, 1.0\], got 1.5"),
                          ("lr0: -0.1\n", r"hyperparameter 'lr0' must be in >= 0.0"),
                          ("nominal_batch: 6.5\n", r"hyperparameter 'nominal_batch' must be a whole number"),
                          ("obj_balance: [4, x]\n", r"hyperparameter 'obj_balance' must be a list of numbers"),
                          ("fliplr: true\n", r"hyperparameter 'fliplr' must be a number"),
                          ("lr0: .nan\n", r"hyperparameter 'lr0' must be a number")]:
        (tmp_path / "h.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            Hyp.load(tmp_path / "h.yaml")
    hyp = Hyp.load()
    assert isinstance(hyp.nominal_batch, int) and hyp.loss.obj_balance == (4.0, 1.0, 0.4)
    assert hyp.replace(mosaic=0.25).aug.mosaic == 0.25 and hyp.aug.mosaic == 1.0  # frozen: replace makes a copy
    with pytest.raises(ConfigError, match="'scale' must be in"):
        hyp.replace(scale=1.0)


def test_hyp_keys_are_the_default_file_keys():
    """The dataclasses hold the types, cfg/hyp/hyp.scratch-high.yaml the values: the same keys in
    the same order, the loss's and the augmentation's shares typed by their own modules."""
    from data.augment import AugmentParams
    from engine.config import DEFAULT_HYP
    from models.loss.losses import LossGains

    default = load_yaml(DEFAULT_HYP)
    assert Hyp.keys() == list(default)
    hyp = Hyp.load()
    assert isinstance(hyp.loss, LossGains) and isinstance(hyp.aug, AugmentParams)
    assert hyp.as_dict() == {k: list(v) if isinstance(v, tuple) else v for k, v in default.items()}
    assert (hyp.loss.seg, hyp.aug.mosaic, hyp.aug.hsv_v) == (default["seg"], default["mosaic"], default["hsv_v"])
    assert Hyp.from_dict(hyp.as_dict()) == hyp


def test_run_config_fills_options_from_data_defaults_and_reads_back_unchanged():
    from engine.config import FALLBACK, RunConfig, TrainOptions

    config = RunConfig.resolve(TrainOptions(epochs=5), {"batch_size": 8, "hyp": "cfg/hyp/hyp.quickstart.yaml"})
    opt = config.options
    assert (opt.epochs, opt.batch_size, opt.img_size) == (5, 8, FALLBACK["img_size"])
    assert config.hyp.nominal_batch == 8 and config.accumulate == 1
    assert config.effective_weight_decay == pytest.approx(config.hyp.weight_decay)  # 8 images per step of 8
    again = RunConfig.from_saved(config.to_dict(), "run", version=2)
    assert again == config
    # format-1 checkpoints saved the weight decay after scaling it to the batch: unscaled on reading
    big = RunConfig.resolve(TrainOptions(batch_size=24), {})  # 3 batches of 24 per step of a nominal 64
    assert big.effective_weight_decay == pytest.approx(big.hyp.weight_decay * 72 / 64)
    saved = big.to_dict()
    saved["hyp"]["weight_decay"] = big.effective_weight_decay
    assert RunConfig.from_saved(saved, "old", version=1).hyp.weight_decay == pytest.approx(big.hyp.weight_decay)


def test_new_options_go_through_the_saved_config_and_patience_needs_validation():
    """--freeze (a tuple), --label-smoothing (into the hyp) and the validation size survive
    config.yaml (plain YAML) and read back equal; --patience with --noval/--notest is refused."""
    import yaml

    from engine.config import RunConfig, TrainOptions

    config = RunConfig.resolve(TrainOptions(freeze=(0, 2), label_smoothing=0.1, val_img_size=320, epochs=1), {})
    assert config.hyp.loss.label_smoothing == 0.1 and config.options.freeze == (0, 2)
    saved = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert saved["args"]["freeze"] == [0, 2]
    assert RunConfig.from_saved(saved, "run", version=2) == config
    assert RunConfig.resolve(TrainOptions(freeze="backbone"), {}).to_dict()["args"]["freeze"] == "backbone"
    for flag in ("noval", "notest"):
        with pytest.raises(ConfigError, match=f"--patience 5 with --{flag}: patience counts epochs"):
            TrainOptions(patience=5, **{flag: True}).check()
    TrainOptions(patience=5).check()
