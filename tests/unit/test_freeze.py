"""--freeze: which layers a spec names, and a real training step that leaves every frozen tensor
(weights, BatchNorm statistics, their EMA copies) bit-identical while the rest trains."""
from __future__ import annotations

import logging

import pytest
import torch

from conftest import ema_of
from engine.train.freeze import frozen_layers
from models.model import build_model
from utils.dist import unwrap
from utils.errors import ConfigError


def test_a_freeze_spec_names_layers_as_the_official_scripts_read_it(small_cfg):
    model = build_model(small_cfg("anchor"), num_classes=3)
    n = len(model.layers)
    assert frozen_layers((), model) == [] and frozen_layers((0,), model) == []  # YOLOv5's default [0]: nothing
    assert frozen_layers((3,), model) == [0, 1, 2]  # one number: that many leading layers
    assert frozen_layers((5, 0, 2), model) == [0, 2, 5]  # several: those layers
    assert frozen_layers("backbone", model) == list(range(len(model.yaml["backbone"])))
    assert frozen_layers((n - 1,), model) == list(range(n - 1))  # all but the head
    with pytest.raises(ConfigError, match=f"--freeze {n}: the model has {n} layers"):
        frozen_layers((n,), model)
    with pytest.raises(ConfigError, match=f"--freeze: no layer 99: the model has {n} layers"):
        frozen_layers((0, 99), model)
    with pytest.raises(ConfigError, match="every layer frozen"):
        frozen_layers(tuple(range(n)), model)


def _layer(key: str) -> int:
    return int(key.split(".")[1])


def test_a_step_leaves_frozen_tensors_bit_identical(make_trainer, caplog):
    with caplog.at_level(logging.INFO, logger="gradpath.train"):
        trainer = make_trainer("anchor", freeze=(6,))
    model, ema = unwrap(trainer.model), ema_of(trainer)
    assert any(r.getMessage().startswith("frozen: 6 of 27 layers (0-5), ") for r in caplog.records)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if _layer(k) < 6}
    ema_frozen = {k: v.clone() for k, v in ema.ema.state_dict().items() if _layer(k) < 6}
    others = {k: v.clone() for k, v in model.state_dict().items() if _layer(k) >= 6}
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for k, p in model.named_parameters() if _layer(k) < 6)  # nor any decay
    assert all(id(p) in in_optimizer for k, p in model.named_parameters() if _layer(k) >= 6)

    trainer.model.train()
    trainer._call("before_epoch")  # as train_one_epoch does: the FreezeHook puts frozen BatchNorm back in eval
    trainer.train_step(next(iter(trainer.loader)), 0)
    assert trainer.last_opt_step == 0 and ema.updates == 1  # the optimizer stepped, the EMA moved

    now, ema_now = model.state_dict(), ema.ema.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items()), [k for k, v in frozen.items() if not torch.equal(now[k], v)]
    assert all(torch.equal(ema_now[k], v) for k, v in ema_frozen.items())
    changed = [k for k, v in others.items() if not torch.equal(now[k], v)]
    assert any(k.endswith("running_mean") for k in changed)  # unfrozen BatchNorm statistics moved
    assert any(k.endswith(".conv.weight") for k in changed)  # unfrozen weights trained
