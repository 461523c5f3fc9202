"""Inference backends behind one call: backend(images (B,3,H,W) float 0-1) -> RawOutput (the
model's eval output) or End2EndOutput (an end-to-end export's detections). Chosen by the --weights
path: .pt (PyTorch), .onnx (ONNX Runtime), *_openvino_model/ (OpenVINO), .torchscript,
.engine (TensorRT). Each exposes the names, category ids, stride, size, task and raw or end-to-end of the
file's own metadata as `meta` (engine.checkpoint.ModelMeta; utils.structures has the output
contracts)."""
from __future__ import annotations

import abc
import json
import warnings
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import ModelMeta
from engine.device import compile_model, leave_cpu_to_runtime, memory_format, reuse_freed_memory
from engine.export.openvino import PROTO_LAYOUT
from utils.errors import CheckpointError
from utils.structures import End2EndOutput, RawOutput

TRT_MAGIC = b"GPTRT1\n"  # our TensorRT files: magic, uint32 little-endian length, metadata JSON, engine
SUFFIXES = ".pt, .onnx, *_openvino_model/ (or its .xml), .torchscript, .engine"


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Backend(abc.ABC):
    """What every backend shares: the metadata, the static input shape if any, and the output
    contract. Subclasses set meta (and fixed/fixed_batch through _shape) and run the images in
    __call__; the runtimes that take numpy arrays do so through ArrayBackend."""

    meta: ModelMeta
    fixed: tuple[int, int] | None = None  # (h, w) of a static-shape export
    fixed_batch: int | None = None

    def __init__(self, device: torch.device):
        self.device = device

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor) -> RawOutput | End2EndOutput:
        """images (B,3,H,W) float 0-1 -> the model's outputs."""

    def wrap(self, outs: list[torch.Tensor]) -> RawOutput | End2EndOutput:
        if self.meta.end2end:
            n, boxes, scores, classes = outs[:4]
            return End2EndOutput(n, boxes.float(), scores.float(), classes, outs[4].float() if len(outs) > 4 else None)
        return RawOutput(outs[0].float(), outs[1].float() if len(outs) > 1 else None)

    def check_size(self, images: torch.Tensor) -> None:
        """A static-shape export refuses any other input size, in one line."""
        if self.fixed and tuple(images.shape[2:]) != self.fixed:
            raise ValueError(f"this model takes {self.fixed[0]}x{self.fixed[1]} inputs (got "
                             f"{images.shape[2]}x{images.shape[3]}); use --img-size {self.fixed[0]} or export with --dynamic")

    def _shape(self, shape: list) -> None:
        """fixed / fixed_batch from an input shape whose dynamic dims are not ints (or are -1)."""
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        self.fixed_batch = dims[0]
        self.fixed = (dims[2], dims[3]) if dims[2] and dims[3] else None


class ArrayBackend(Backend):
    """A runtime that takes and gives numpy arrays (ONNX Runtime, OpenVINO): the images go over
    as input_dtype, in chunks of a fixed batch size when the file has one."""

    input_dtype = np.float32

    def __call__(self, images: torch.Tensor) -> RawOutput | End2EndOutput:
        self.check_size(images)
        outs = [torch.from_numpy(np.asarray(o)).to(self.device) for o in self._batched(images.cpu().numpy())]
        return self.wrap(outs)

    def _batched(self, x: np.ndarray) -> list[np.ndarray]:
        """One run, or several when the file has a fixed batch size other than this batch's (the
        last chunk zero-padded, its padding dropped)."""
        x = x.astype(self.input_dtype, copy=False)
        b = self.fixed_batch
        if not b or x.shape[0] == b:
            return self._run(x)
        parts = []
        for i in range(0, x.shape[0], b):
            chunk = x[i:i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([o[:n] for o in self._run(chunk)])
        return [np.concatenate(outs) for outs in zip(*parts)]

    @abc.abstractmethod
    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        """One runtime call on x (B,3,H,W) input_dtype -> its outputs in the file's order."""


class TorchBackend(Backend):
    def __init__(self, weights: str | Path, device: torch.device, half: bool = False, compile: bool = False):
        from engine.checkpoint import load_model

        super().__init__(device)
        self.model, ckpt = load_model(weights, device, fuse=True)
        self.memory_format = memory_format(device, "inference")
        self.model.to(memory_format=self.memory_format)
        self.half = half and device.type == "cuda"
        if self.half:
            self.model.half()
        compile_model(self.model, compile)
        self.meta = ModelMeta.of(ckpt, self.model)
        # torch computes on the CPU with malloc's memory: keep freed activations for the next call
        # (gp-n-seg at 640 on 2 cores: batch 1 92-110 -> 71-74 ms, batch 16 2.3-2.9 -> 1.1-1.2 s)
        reuse_freed_memory(device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> RawOutput:
        images = images.contiguous(memory_format=self.memory_format)
        pred, proto = self.model(images.half() if self.half else images)
        return RawOutput(pred.float(), None if proto is None else proto.float())


class OnnxBackend(ArrayBackend):
    def __init__(self, path: str | Path, device: torch.device):
        import onnxruntime as ort

        super().__init__(device)
        path = existing_file(path, "ONNX file")
        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        options = ort.SessionOptions()
        # onnxruntime's threads spin-wait after each run by default, taking the cores from the
        # decoding, letterboxing and NMS that run between calls (on 2 cores: 74-96 ms per image
        # end to end with spinning, 66-80 without; benchmarks/inference.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=(["CUDAExecutionProvider"] if cuda else [])
                                                + ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for every kind of bad file
            raise CheckpointError(f"--weights {path}: not a readable ONNX model (truncated or corrupt?): "
                                  f"{first_line(e)}") from None
        if not cuda:
            leave_cpu_to_runtime(device)
        self.meta = ModelMeta.from_strings(self.session.get_modelmeta().custom_metadata_map, str(path))
        if not self.meta.task:  # the first export.py's files: raw outputs, protos when segmenting
            self.meta = replace(self.meta, task="segment" if len(self.session.get_outputs()) > 1 else "detect")
        inp = self.session.get_inputs()[0]
        self._shape(inp.shape)
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def _run(self, x):
        return self.session.run(None, {"images": x})


class OpenVinoBackend(ArrayBackend):
    """On CPU. precision: OpenVINO's inference precision for the float parts: "f32" (default: an
    FP32 export computes in FP32, an INT8 one keeps its float parts FP32), or "auto" for the
    device's choice (bf16 on CPUs that have it). A model whose input size is dynamic (export.py
    --dynamic) is compiled once per input shape it meets, at that shape (SHAPES_KEPT of them, the
    least recently used dropped): gp-n-seg at 640x480 on 2 cores, 77.5 ms a call against 83.2 for
    the one dynamic compile, and 0.25 s to compile; a video or stream has one shape, and val.py's
    rectangular batches come sorted by shape."""

    SHAPES_KEPT = 8

    def __init__(self, path: str | Path, device: torch.device, precision: str = "f32"):
        import openvino as ov

        super().__init__(device)
        xml = openvino_xml(Path(path))
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(xml))
        except RuntimeError as e:
            raise CheckpointError(f"--weights {path}: not a readable OpenVINO model: {first_line(e)}") from None
        model = self.model
        values = model.get_rt_info()["gradpath"] if model.has_rt_info(["gradpath"]) else {}
        strings = {k: v.astype(str) for k, v in values.items()}
        self.meta = ModelMeta.from_strings(strings, str(path))
        self.nhwc_protos = strings.get(PROTO_LAYOUT) == "nhwc"  # written by engine.export.openvino.to_openvino
        self._shape([d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()])
        self.config = {"PERFORMANCE_HINT": "LATENCY",
                       **({"INFERENCE_PRECISION_HINT": precision} if precision != "auto" else {})}
        self.requests: OrderedDict[tuple[int, ...], tuple] = OrderedDict()  # input shape -> (compiled, request)
        if model.inputs[0].get_partial_shape().is_static:  # compiled now: a file the CPU cannot run fails here
            self._request(tuple(d.get_length() for d in model.inputs[0].get_partial_shape()))
        leave_cpu_to_runtime(torch.device("cpu"))

    def _request(self, shape: tuple[int, ...]):
        """(compiled model, infer request) for inputs of `shape`."""
        if shape in self.requests:
            self.requests.move_to_end(shape)
            return self.requests[shape]
        model = self.model
        if model.inputs[0].get_partial_shape().is_dynamic:
            model = model.clone()
            model.reshape({model.inputs[0]: list(shape)})
        compiled = self.core.compile_model(model, "CPU", self.config)
        self.requests[shape] = (compiled, compiled.create_infer_request())
        if len(self.requests) > self.SHAPES_KEPT:
            self.requests.popitem(last=False)
        return self.requests[shape]

    def _run(self, x):
        compiled, request = self._request(x.shape)
        # the input is read in place (it is not touched while the request runs); the outputs are
        # the request's own copies (share_outputs=False): the next call cannot overwrite them
        result = request.infer({0: x}, share_inputs=True, share_outputs=False)
        return [result[o] for o in compiled.outputs]

    def wrap(self, outs):
        # (B, nm, h, w) as a view: a copy here (torch's threads waking beside OpenVINO's) cost
        # 4 ms a call on 2 cores; decode_masks reads either layout without one
        if self.nhwc_protos and len(outs) > 1:
            outs = [outs[0], outs[1].permute(0, 3, 1, 2)]
        return super().wrap(outs)


def existing_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, or the one-line error naming it as `what` (an ONNX file, ...)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--weights {path}: {what} not found")
    return path


def openvino_xml(path: Path) -> Path:
    """The .xml of an OpenVINO model folder (or the .xml itself), its .bin beside it."""
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise CheckpointError(f"--weights {path}: an OpenVINO model folder holds one .xml, found {len(xmls)}")
        path = xmls[0]
    elif path.suffix != ".xml" or not path.is_file():
        raise CheckpointError(f"--weights {path}: OpenVINO model not found (a *_openvino_model folder or its .xml)")
    if not path.with_suffix(".bin").is_file():
        raise CheckpointError(f"--weights {path}: its weights {path.with_suffix('.bin').name} are missing beside it")
    return path


class TorchScriptBackend(Backend):
    def __init__(self, path: str | Path, device: torch.device):
        super().__init__(device)
        path = existing_file(path, "TorchScript file")
        extra = {"metadata.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise CheckpointError(f"--weights {path}: not a readable TorchScript file: {first_line(e)}") from None
        reuse_freed_memory(device)  # as TorchBackend
        try:
            values = json.loads(extra["metadata.json"] or "{}")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: unreadable gradpath metadata: {e}") from None
        self.meta = ModelMeta.from_strings(values, str(path))

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor):
        outs = self.module(images.to(self.device).float())
        return self.wrap([o for o in outs if o is not None])


def read_trt_file(path: Path) -> tuple[ModelMeta, bytes]:
    """(metadata, serialized engine) of one of our .engine files."""
    data = path.read_bytes()
    if not data.startswith(TRT_MAGIC) or len(data) < len(TRT_MAGIC) + 4:
        raise CheckpointError(f"--weights {path}: not a gradpath TensorRT engine (export it with export.py --include engine)")
    at = len(TRT_MAGIC)
    n = int.from_bytes(data[at:at + 4], "little")
    try:
        values = json.loads(data[at + 4:at + 4 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable gradpath metadata (truncated?): {e}") from None
    return ModelMeta.from_strings(values, str(path)), data[at + 4 + n:]


class TensorRTBackend(Backend):
    """A TensorRT engine (built on this GPU model and TensorRT version), run on torch CUDA tensors."""

    def __init__(self, path: str | Path, device: torch.device):
        super().__init__(device)
        path = existing_file(path, "TensorRT engine")
        if device.type != "cuda" or not torch.cuda.is_available():
            raise CheckpointError(f"--weights {path}: a TensorRT engine runs on an NVIDIA GPU only"
                                  + (" (pass --device 0)" if torch.cuda.is_available() else "; this machine has no CUDA device"))
        try:
            import tensorrt as trt
        except ImportError:
            raise CheckpointError(f"--weights {path}: TensorRT is not installed (pip install tensorrt)") from None
        self.meta, blob = read_trt_file(path)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise CheckpointError(f"--weights {path}: TensorRT could not load the engine (built by another "
                                  f"TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.half = self.engine.get_tensor_dtype("images") == trt.DataType.HALF
        self._shape(list(self.engine.get_tensor_shape("images")))

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor):
        self.check_size(images)
        x = images.to(self.device, torch.float16 if self.half else torch.float32).contiguous()
        self.context.set_input_shape("images", tuple(x.shape))
        self.context.set_tensor_address("images", x.data_ptr())
        outs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), device=self.device,
                              dtype=_torch_dtype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return self.wrap(outs)


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt

    return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}[trt_dtype]


def backend_kind(weights: str | Path) -> str:
    """'pytorch', 'onnx', 'openvino', 'torchscript' or 'tensorrt', from the path alone."""
    p = Path(weights)
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix == ".xml" or p.name.endswith("_openvino_model") or (p.is_dir() and any(p.glob("*.xml"))):
        return "openvino"
    if p.suffix == ".torchscript":
        return "torchscript"
    if p.suffix == ".engine":
        return "tensorrt"
    if p.suffix == ".pt" or p.suffix == "":
        return "pytorch"
    raise CheckpointError(f"--weights {weights}: unknown model format {p.suffix!r} (expected {SUFFIXES})")


def load_backend(weights: str | Path, device: torch.device, half: bool = False, compile: bool = False) -> Backend:
    """The backend of a --weights path. half: FP16 for a .pt on CUDA; for OpenVINO the CPU's own
    reduced precision for the float parts (bf16 where the CPU has it; OpenVINO's default, which
    we otherwise override to compute an FP32 file in FP32); other formats keep their precision."""
    kind = backend_kind(weights)
    if kind == "pytorch":
        return TorchBackend(weights, device, half, compile)
    if kind == "openvino":
        return OpenVinoBackend(weights, device, "auto" if half else "f32")
    return {"onnx": OnnxBackend, "torchscript": TorchScriptBackend, "tensorrt": TensorRTBackend}[kind](weights, device)


def baked_note(meta: ModelMeta, conf_thres: float, iou_thres: float, max_det: int, multi_label: bool = False,
               agnostic: bool = False, retina_masks: bool = False) -> str | None:
    """One line naming the asked settings an end-to-end export cannot take (its NMS ran inside
    the graph at export time); None when there are none or the file is raw. A higher conf_thres
    and a smaller max_det still apply to its output."""
    nms = meta.nms
    if nms is None:
        return None
    asked = {"--iou-thres": abs(iou_thres - nms.iou_thres) > 1e-9, "--conf-thres": conf_thres < nms.conf_thres,
             "--max-det": max_det > nms.topk and conf_thres < nms.conf_thres,  # val.py's AP settings
             "multi-label": multi_label != nms.multi_label, "--agnostic-nms": agnostic, "--retina-masks": retina_masks}
    differ = [k for k, v in asked.items() if v]
    if not differ:
        return None
    return (f"{', '.join(differ)} not applied: the end-to-end export selected its detections inside the graph "
            f"(conf > {nms.conf_thres:g}, NMS IoU {nms.iou_thres:g}, top {nms.topk}, "
            f"{'per class' if nms.multi_label else 'best class'}; masks at 1/4 input size); export again to change them")
