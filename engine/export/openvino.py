"""OpenVINO IR (FP32, FP16 weights, or INT8 by NNCF post-training quantization) from the checked
ONNX graph, as a folder NAME_openvino_model/ holding NAME.xml and NAME.bin; the export metadata
goes in the IR's rt_info under "gradpath"."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from engine.checkpoint import ModelMeta
from engine.export.checks import CheckFailed
from engine.export.files import staged_dir

LOG = logging.getLogger(__name__)


def ignored_patterns(head_index: int) -> list[str]:
    """Node-name regexes NNCF leaves in float: inside the head (layer head_index) everything but
    the prototype branch and the anchor-free branches' first two convs, i.e. the last 1x1
    prediction convs and the decoding; and every op the end-to-end wrapper adds (NMS, top-k,
    mask assembly). Names are torch.onnx's module paths: /layers.N/... raw, /model/layers.N/...
    inside the end-to-end wrapper."""
    h = f"^(/model)?/layers\\.{head_index}/"
    return [h + r"(?!proto/)(?!(box|cls|coef)\.\d+\.[01]/)", r"^/(?!model/|layers\.)"]


PROTO_LAYOUT = "proto_layout"  # rt_info key: "nhwc" where the protos output is channels-last


def to_openvino(onnx_path: Path, meta: ModelMeta):
    """The ov.Model of an ONNX file, with the metadata in its rt_info. A raw graph's protos
    leave it channels-last, the layout the CPU plugin computes them in: handing them out
    channels-first cost a reference reorder of 32x160x160 values per image, 3.5-5 ms of a
    25-45 ms gp-n-seg call (benchmarks/inference.py); the backend views them back."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    model = ov.convert_model(str(onnx_path))
    strings = meta.to_strings()
    if not meta.end2end and any("protos" in o.get_names() for o in model.outputs):
        ppp = PrePostProcessor(model)
        ppp.output("protos").model().set_layout(ov.Layout("NCHW"))
        ppp.output("protos").tensor().set_layout(ov.Layout("NHWC"))
        model = ppp.build()
        strings[PROTO_LAYOUT] = "nhwc"
    for k, v in strings.items():
        model.set_rt_info(v, ["gradpath", k])
    return model


def quantize_int8(model, images: Iterable[np.ndarray], n_images: int, head_index: int, overflow_fix):
    """NNCF post-training INT8 of an ov.Model, calibrated on `images` ((1,3,H,W) float32 0-1),
    with `overflow_fix` (an nncf.OverflowFix; see overflow_fixes)."""
    import nncf
    from nncf.common.logging import nncf_logger
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    scope = nncf.IgnoredScope(patterns=ignored_patterns(head_index), validate=False)
    advanced = AdvancedQuantizationParameters(overflow_fix=overflow_fix)
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # at INFO it lists every op it leaves in float
    try:
        return nncf.quantize(model, nncf.Dataset(list(images)), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=n_images, ignored_scope=scope, advanced_parameters=advanced)
    finally:
        nncf_logger.setLevel(level)


def write_openvino(onnx_data: bytes, meta: ModelMeta, dest: Path, half: bool, check: Callable[[Path], str],
                   calibration: tuple[Iterable[np.ndarray], int, int] | None = None) -> str:
    """Write dest/ (NAME.xml + NAME.bin, NAME = dest's name without _openvino_model); return the
    check's report. calibration: (images, count, head layer index) for INT8."""
    import openvino as ov

    stem = re.sub(r"_openvino_model$", "", dest.name)

    def attempt(fix) -> str:
        with staged_dir(dest) as tmp:  # a failed check leaves it by the exception: nothing is kept
            onnx_path = tmp / f"{stem}.onnx"
            onnx_path.write_bytes(onnx_data)
            model = to_openvino(onnx_path, meta)
            onnx_path.unlink()
            if fix is not None:
                model = quantize_int8(model, *calibration, overflow_fix=fix)
            ov.save_model(model, str(tmp / f"{stem}.xml"), compress_to_fp16=half)
            report = check(tmp)
            return report if fix is None else f"{report} (NNCF overflow fix: {fix.value})"

    fixes = overflow_fixes() if calibration is not None else (None,)
    for fix in fixes[:-1]:
        try:
            return attempt(fix)
        except CheckFailed as e:
            LOG.warning("%s; this CPU has no VNNI: quantizing again with NNCF's overflow fix on every conv", e)
    return attempt(fixes[-1])


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo names of the int8 dot-product units


def overflow_fixes(cpu_flags: set[str] | None = None) -> tuple:
    """NNCF overflow fixes to try in turn until the INT8 model passes its check on this CPU.
    Without VNNI or AMX, OpenVINO's int8 convolutions add u8 x s8 pairs in int16 (AVX2's
    vpmaddubsw) and can saturate; NNCF's default guards only the first conv. On this project's
    AVX2 CI machine that left a small trained model at 56 of 59 detections (mask IoU 0), fixed by
    weights on half the int8 range in every conv, while the real yolov5n passes with the default
    and fails with the full fix (its 7-bit weights move 4 of 11 boxes). With VNNI the products
    sum in int32: the default only."""
    import nncf

    flags = cpu_flags if cpu_flags is not None else cpu_feature_flags()
    if flags & set(VNNI_FLAGS):
        return (nncf.OverflowFix.FIRST_LAYER,)
    return nncf.OverflowFix.FIRST_LAYER, nncf.OverflowFix.ENABLE


def cpu_feature_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where it is not there (then the fix is on)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())
