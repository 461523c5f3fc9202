"""Fine-tuning onto other classes keeps the head's rows that still mean the same: box, objectness
and mask coefficients always, the class rows of the class names the data shares with the
checkpoint; new classes' rows keep the fresh initialisation. Both heads."""
from __future__ import annotations

import torch

from engine.class_carryover import transfer_with_classes
from models.model import build_model

OLD = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "dog"]
NEW = ["Dog", "person", "widget"]  # names match case-insensitively; widget is new


_OLD_STATES: dict[str, dict] = {}  # one checkpoint per head kind for the module (model builds are slow)


def _old_state(small_cfg, kind: str) -> dict:
    if kind not in _OLD_STATES:
        torch.manual_seed(0)
        old = build_model(small_cfg(kind), num_classes=len(OLD))
        with torch.no_grad():  # distinct values everywhere, so a wrong row cannot match by chance
            for p in old.parameters():
                p.add_(torch.randn_like(p))
        _OLD_STATES[kind] = old.state_dict()
    return _OLD_STATES[kind]


def _pair(small_cfg, kind: str):
    torch.manual_seed(1)
    new = build_model(small_cfg(kind), num_classes=len(NEW))
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    return _old_state(small_cfg, kind), new, fresh


def _anchor_rows(t: torch.Tensor, na: int, axis: int) -> torch.Tensor:
    """(na, no, ...) view of a tensor whose `axis` holds na blocks of no rows."""
    t = t.movedim(axis, 0)
    return t.reshape(na, t.shape[0] // na, *t.shape[1:])


def test_anchor_head_rows_follow_the_class_names(small_cfg):
    state, model, fresh = _pair(small_cfg, "anchor")
    t = transfer_with_classes(model, state, OLD, NEW)
    head = model.head
    prefix = f"layers.{len(model.layers) - 1}."
    assert t.carried == ("Dog", "person") and t.new == ("widget",) and t.remapped == 3 * 3  # m weight/bias, im
    assert t.describe() == "head rows carried over: box, objectness and mask coefficients; classes 2 of 3 " \
                           "(Dog, person); new, initialised afresh: widget"
    na, nm, old_nc = head.na, head.nm, len(OLD)
    own = model.state_dict()
    for name in [f"m.{i}.weight" for i in range(3)] + [f"m.{i}.bias" for i in range(3)] + \
            [f"im.{i}.implicit" for i in range(3)]:
        axis = 1 if name.endswith("implicit") else 0
        got, old, init = (_anchor_rows(x[prefix + name], na, axis) for x in (own, state, fresh))
        assert torch.equal(got[:, :5], old[:, :5]), name  # box and objectness
        assert torch.equal(got[:, 5], old[:, 5 + 9]) and torch.equal(got[:, 6], old[:, 5 + 0]), name  # dog, person
        assert torch.equal(got[:, 7], init[:, 7]), name  # widget: the fresh initialisation
        assert torch.equal(got[:, 8:], old[:, 5 + old_nc:5 + old_nc + nm]), name  # mask coefficients
    # the rest of the network is copied whole
    assert torch.equal(own["layers.0.conv.weight"], state["layers.0.conv.weight"])
    assert t.loaded == t.total - 9


def test_anchor_free_head_class_rows_follow_the_names(small_cfg):
    state, model, fresh = _pair(small_cfg, "anchor_free")
    t = transfer_with_classes(model, state, OLD, NEW)
    prefix = f"layers.{len(model.layers) - 1}."
    own = model.state_dict()
    assert t.carried == ("Dog", "person") and t.remapped == 2 * model.head.nl and t.masks
    for i in range(model.head.nl):
        for part in ("weight", "bias"):
            k = f"{prefix}cls.{i}.2.{part}"
            assert torch.equal(own[k][0], state[k][9]) and torch.equal(own[k][1], state[k][0])
            assert torch.equal(own[k][2], fresh[k][2])
        box = f"{prefix}box.{i}.2.weight"
        assert torch.equal(own[box], state[box])  # box branch: independent of nc, copied whole


def test_same_count_other_order_is_remapped_and_carry_off_starts_afresh(small_cfg):
    """Three classes under a three-class checkpoint of other names: shapes match, yet rows are
    moved by name; with carry=False (--no-class-carryover) every class row starts afresh."""
    torch.manual_seed(0)
    old = build_model(small_cfg("anchor"), num_classes=3)
    state = old.state_dict()
    model = build_model(small_cfg("anchor"), num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    t = transfer_with_classes(model, state, ["cat", "dog", "car"], ["car", "cat", "zebra"])
    k = f"layers.{len(model.layers) - 1}.m.0.bias"
    got, src, init = (_anchor_rows(x[k], model.head.na, 0) for x in (model.state_dict(), state, fresh))
    assert t.carried == ("car", "cat") and torch.equal(got[:, 5], src[:, 7]) and torch.equal(got[:, 6], src[:, 5])
    assert torch.equal(got[:, 7], init[:, 7]) and torch.equal(got[:, :5], src[:, :5])

    t = transfer_with_classes(model, state, ["cat", "dog", "car"], ["cat", "dog", "car"])
    assert t.remapped == 0 and t.loaded == t.total and torch.equal(model.state_dict()[k], state[k])  # copied whole


def test_carry_off_or_a_checkpoint_without_names_leaves_the_class_rows_fresh(small_cfg):
    """--no-class-carryover, or a checkpoint that does not record its class names."""
    state, model, fresh = _pair(small_cfg, "anchor")
    k = f"layers.{len(model.layers) - 1}.m.0.weight"
    for names, carry in ((OLD, False), (None, True), ([], True)):
        t = transfer_with_classes(model, state, names, NEW, carry=carry)
        assert t.remapped == 0 and t.describe() == "" and torch.equal(model.state_dict()[k], fresh[k])
        assert torch.equal(model.state_dict()["layers.0.conv.weight"], state["layers.0.conv.weight"])
