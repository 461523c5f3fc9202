"""ModelMeta as exported files hold it: flat strings both ways, end-to-end settings included; the
first export.py's files still read; a file without our metadata is refused in one line."""
from __future__ import annotations

import pytest

from engine.checkpoint import BakedNms, ModelMeta
from engine.infer.backends import baked_note
from utils.errors import CheckpointError

META = ModelMeta(("person", "traffic light"), (1, 10), 640, 32, "segment")


def test_raw_and_end2end_metadata_read_back_as_written():
    e2e = ModelMeta(**{**META.__dict__, "nms": BakedNms(0.25, 0.45, 100, True)})
    for meta in (META, e2e):
        strings = meta.to_strings()
        assert all(isinstance(v, str) for v in strings.values())
        assert ModelMeta.from_strings(strings) == meta
    assert META.to_strings()["end2end"] == "false" and "conf_thres" not in META.to_strings()
    assert e2e.to_strings()["topk"] == "100" and e2e.end2end and not META.end2end


def test_the_first_export_py_files_read_as_raw_outputs():
    """It wrote names, category_ids, img_size and stride only: raw outputs, the task left to the
    file's outputs (the ONNX backend counts them)."""
    old = {"names": '["person", "traffic light"]', "category_ids": "[1, 10]", "img_size": "320", "stride": "32"}
    meta = ModelMeta.from_strings(old)
    assert (meta.names, meta.category_ids, meta.img_size, meta.task, meta.nms) == (META.names, (1, 10), 320, "", None)


@pytest.mark.parametrize("values, message", [
    ({}, "m.onnx: no gradpath metadata inside (was it written by export.py?)"),
    ({"names": "[unquoted]"}, "m.onnx: unreadable gradpath metadata (JSONDecodeError"),
    ({"names": "[]", "end2end": "true"}, "m.onnx: unreadable gradpath metadata (KeyError: 'conf_thres')"),
])
def test_missing_or_broken_metadata_is_one_line(values, message):
    with pytest.raises(CheckpointError) as e:
        ModelMeta.from_strings(values, "m.onnx")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_the_note_names_only_the_settings_an_end2end_graph_cannot_take():
    e2e = ModelMeta(**{**META.__dict__, "nms": BakedNms(0.25, 0.45, 100)})
    assert baked_note(META, 0.001, 0.65, 300) is None  # raw outputs take everything
    assert baked_note(e2e, 0.25, 0.45, 300) is None  # detect.py's defaults
    assert baked_note(e2e, 0.5, 0.45, 10) is None  # a higher conf and a smaller max-det still apply
    note = baked_note(e2e, 0.001, 0.65, 300, multi_label=True)  # val.py's defaults
    assert note.startswith("--iou-thres, --conf-thres, --max-det, multi-label not applied: the end-to-end export "
                           "selected its detections inside the graph (conf > 0.25, NMS IoU 0.45, top 100, best class")
