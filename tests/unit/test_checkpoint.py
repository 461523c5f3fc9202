"""Checkpoint files: atomic writes and refusal of anything but tensors and plain containers."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from conftest import ROOT
from utils.errors import CheckpointError
from utils.io import FORMAT_VERSION, atomic_write_text, load_checkpoint, save_checkpoint


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_roundtrip_plain_dict(tmp_path):
    ckpt = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "config": {"names": ["a", "b"], "nc": 2}}
    path = save_checkpoint(ckpt, tmp_path / "w" / "last.pt")
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["w"], ckpt["model"]["w"]) and back["config"]["names"] == ["a", "b"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_code_running_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_with_eval_is_refused(tmp_path):
    path = tmp_path / "evil2.pt"
    path.write_bytes(pickle.dumps({"model": eval}))  # a pickled builtin reference
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize("cut", [0, 10, 200])
def test_truncated_or_empty_checkpoint(tmp_path, cut):
    good = save_checkpoint({"model": {"w": torch.ones(1000)}}, tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:cut])
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)


def test_missing_and_foreign_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a gradpath checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_sigkill_during_write_keeps_previous_file(tmp_path):
    """A writer killed mid-write leaves the old file intact and loadable."""
    target = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 1}, target)
    script = (
        "import os, signal, sys, torch\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from utils.io import atomic_write_bytes\n"
        "def write(f):\n"
        "    f.write(b'x' * 4096); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write_bytes(sys.argv[1], write)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script, str(target), root])
    assert proc.returncode == -9
    assert load_checkpoint(target)["epoch"] == 1


def test_atomic_text(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "r.json", "{}")
    assert p.read_text() == "{}"
    assert zipfile.is_zipfile(save_checkpoint({"model": {}}, tmp_path / "z.pt"))


# written by train.py before the layout change (checkpoint format 1): a width-0.125 gp-n-seg after
# epoch 1 of 2 at batch 8 with nominal_batch 20, so its saved hyp holds the weight decay scaled by
# 8 x 2 / 20 (0.0004 for the file's 0.0005)
FORMAT1 = ROOT / "tests/fixtures/checkpoint-format1-tiny.pt"


def test_a_checkpoint_written_before_the_layout_change_loads_and_resumes_its_config():
    from engine.checkpoint import ModelMeta, model_from_checkpoint
    from engine.config import RunConfig

    ckpt = load_checkpoint(FORMAT1)
    assert ckpt["version"] == 1 and ckpt["epoch"] == 0
    model = model_from_checkpoint(ckpt, FORMAT1)  # strict: every tensor in place
    meta = ModelMeta.of(ckpt, model)
    assert (meta.img_size, meta.stride, meta.task, len(meta.names)) == (64, 32, "segment", 80)
    assert ckpt["config"]["hyp"]["weight_decay"] == pytest.approx(0.0004)
    config = RunConfig.from_saved(ckpt["config"], str(FORMAT1), ckpt["version"])
    assert config.hyp.weight_decay == pytest.approx(0.0005)  # unscaled: the run scales it once, as before
    assert config.effective_weight_decay == pytest.approx(0.0004)


def test_a_checkpoint_of_a_newer_format_is_refused_in_one_line(tmp_path):
    ckpt = load_checkpoint(FORMAT1)
    save_checkpoint({**ckpt, "version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match=rf"new.pt: written by a newer gradpath \(checkpoint format "
                                              rf"{FORMAT_VERSION + 1}; this one reads formats up to {FORMAT_VERSION}\)"):
        load_checkpoint(tmp_path / "new.pt")


class _Trainer:
    """What CheckpointHook reads of a trainer: the model, the loop state, the epoch count."""

    def __init__(self, epochs: int):
        from types import SimpleNamespace

        self.model = torch.nn.Linear(2, 2)
        self.config = SimpleNamespace(options=SimpleNamespace(epochs=epochs))
        self.epoch, self.stop_requested, self.epoch_results = 0, False, {}

    def state_dict(self):
        return {"optimizer": {}, "epoch": self.epoch}

    def run_epoch(self, hook, improved: bool) -> None:
        with torch.no_grad():
            self.model.weight.fill_(self.epoch)
        self.epoch_results = {"improved": improved}
        hook.after_epoch(self)
        self.epoch += 1


@pytest.mark.parametrize("links", [True, False])
def test_best_pt_is_last_pt_linked_during_the_run_and_its_own_file_at_the_end(tmp_path, monkeypatch, links):
    """An improved epoch's best.pt is last.pt's file under a second name (no second save), kept
    when last.pt is replaced, and written on its own at the run's last epoch; without hard links
    (links=False) a copy."""
    from engine.train.ema import ModelEMA
    from engine.train.hooks import CheckpointHook

    if not links:
        def no_link(*_):
            raise OSError("hard links not supported")
        monkeypatch.setattr(os, "link", no_link)
    trainer = _Trainer(epochs=3)
    hook = CheckpointHook(tmp_path, ModelEMA(trainer.model), {"nc": 2}, save_period=2)
    epoch_of = lambda name: int(load_checkpoint(tmp_path / name)["model"]["weight"][0, 0])  # noqa: E731
    same_file = lambda a, b: os.stat(tmp_path / a).st_ino == os.stat(tmp_path / b).st_ino  # noqa: E731
    trainer.run_epoch(hook, improved=True)
    assert epoch_of("best.pt") == epoch_of("last.pt") == 0 and same_file("best.pt", "last.pt") == links
    trainer.run_epoch(hook, improved=False)
    assert epoch_of("last.pt") == 1 and epoch_of("best.pt") == 0 and not same_file("best.pt", "last.pt")
    assert epoch_of("epoch2.pt") == 1 and same_file("epoch2.pt", "last.pt") == links
    trainer.run_epoch(hook, improved=True)
    assert epoch_of("best.pt") == epoch_of("last.pt") == 2 and not same_file("best.pt", "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch2.pt", "last.pt"]  # no temporary left
