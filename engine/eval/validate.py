"""val.py's model path: load a checkpoint, build the loader, evaluate, print and save."""
from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

from data.config import load_data_config
from data.loader import build_dataloader
from engine.checkpoint import ModelMeta, load_model
from engine.device import compile_model, configure_cuda, memory_format, reuse_freed_memory
from engine.eval.coco_eval import EvaluationError
from engine.eval.evaluator import evaluate
from engine.infer.backends import backend_kind, baked_note, load_backend
from utils.cli_args import round_to_stride
from utils.errors import CheckpointError, ConfigError, error_line
from utils.dist import select_device
from utils.io import atomic_write_text
from utils.paths import new_run_dir


def run_validation(args: Namespace) -> int:
    """val.py with --weights: the exit code; errors are one line on stderr."""
    try:
        if not args.weights:
            raise ConfigError("--weights is required (or --ann-json with --pred-json)")
        device = select_device(args.device, several=True)
        configure_cuda(device, fixed_shapes=False)  # rectangular batches vary in shape
        if backend_kind(args.weights) == "pytorch":
            model, meta, data = checkpoint_model(args, device)
        else:
            model, meta, data = exported_model(args, device)
        if not data:
            raise ConfigError("--data is required: the checkpoint does not name its dataset")
        data_cfg = load_data_config(data)
        nc = len(meta.names)
        single_cls = bool(args.single_cls or meta.single_cls)
        if single_cls and nc != 1:
            raise ConfigError(f"{args.weights}: --single-cls needs a one-class model, this one has {nc} classes")
        if not single_cls and data_cfg.nc != nc:
            raise ConfigError(f"{data}: has {data_cfg.nc} classes but the model was trained with {nc}")
        img_size = round_to_stride(args.img_size, meta.stride) if args.img_size else meta.img_size
        rect, fixed = True, getattr(model, "fixed", None)
        if fixed:  # a static-shape export: square batches at its size, as the official val.py does
            if fixed[0] != fixed[1] or (args.img_size and img_size != fixed[0]):
                raise ConfigError(f"--weights {args.weights}: exported for {fixed[0]}x{fixed[1]} inputs only; "
                                  f"val.py needs a square export at --img-size (or export with --dynamic)")
            img_size, rect = fixed[0], False
            print(f"val.py: {args.weights} takes {fixed[0]}x{fixed[1]} inputs: square batches, not rectangular",
                  file=sys.stderr)
        split = "test" if args.task == "test" else "val"
        loader, dataset = build_dataloader(data_cfg, split, img_size, args.batch_size, rect=rect,
                                           workers=args.workers, single_cls=single_cls, stride=meta.stride,
                                           pin_memory=device.type == "cuda")
        save_dir = new_run_dir(args.project, args.name, args.exist_ok)
        result = evaluate(model, loader, dataset, device, args.conf_thres, args.iou_thres, args.max_det,
                          args.half, save_dir, save_json=args.save_json or args.save_txt, plots=True, verbose=args.verbose,
                          retina_masks=args.retina_masks)
    except (ConfigError, CheckpointError, EvaluationError, ValueError, OSError) as e:
        print(f"val.py: error: {error_line(e)}", file=sys.stderr)
        return 2
    if args.task == "speed":
        print("speed: " + ", ".join(f"{k} {v:.1f} ms" for k, v in result.speed.items()) + f" per image at {img_size}")
        return 0
    print(result.table(verbose=args.verbose))
    if args.save_txt:
        results = json.loads((save_dir / "predictions.json").read_text())
        shapes = {int(i): tuple(int(v) for v in s) for i, s in zip(dataset.index.image_ids, dataset.index.shapes)}
        write_txt(results, shapes, {c: k for k, c in enumerate(dataset.category_ids)}, save_dir / "labels")
    print(f"Results saved to {save_dir}")
    return 0


def checkpoint_model(args: Namespace, device):
    """(fused model, its ModelMeta, the dataset it names or --data) of a .pt checkpoint."""
    model, ckpt = load_model(args.weights, device, fuse=True)
    reuse_freed_memory(device)  # as CPU training and the PyTorch inference backend do
    if args.half and device.type == "cuda":
        model.half()  # here, so that a compiled model is compiled in half precision
    compile_model(model.to(memory_format=memory_format(device, "inference")), args.compile)
    return model, ModelMeta.of(ckpt, model), args.data or (ckpt.get("config") or {}).get("data")


def exported_model(args: Namespace, device):
    """(inference backend, its ModelMeta, --data) of an exported file; what the export fixed
    (precision, an end-to-end graph's thresholds) is said in one line where the flags differ."""
    backend = load_backend(args.weights, device, half=args.half)
    if args.compile or (args.half and backend_kind(args.weights) != "openvino"):
        print(f"val.py: --half (but for OpenVINO: bf16 on CPUs that have it) and --compile apply to .pt "
              f"checkpoints; {args.weights} keeps the precision it was exported in", file=sys.stderr)
    note = baked_note(backend.meta, args.conf_thres, args.iou_thres, args.max_det, multi_label=True,
                      retina_masks=args.retina_masks)
    if note:
        print(f"val.py: {note}", file=sys.stderr)
    if not args.data:
        raise ConfigError(f"--data is required: {args.weights} does not name its dataset")
    return backend, backend.meta, args.data


def write_txt(results: list[dict], shapes: dict[int, tuple[int, int]], cat_index: dict[int, int], out: Path) -> None:
    """val.py --save-txt: labels/<image id>.txt, one `class cx cy w h conf` line (normalised) per detection."""
    out.mkdir(parents=True, exist_ok=True)
    lines: dict[int, list[str]] = {i: [] for i in shapes}
    for d in results:
        h, w = shapes[d["image_id"]]
        x, y, bw, bh = d["bbox"]
        lines[d["image_id"]].append(f"{cat_index[d['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} "
                                    f"{bw / w:.6f} {bh / h:.6f} {d['score']:.5f}")
    for image_id, ls in lines.items():
        atomic_write_text(out / f"{image_id}.txt", "\n".join(ls) + ("\n" if ls else ""))
