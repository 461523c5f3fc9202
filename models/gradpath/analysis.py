"""Gradient path analysis (paper sections 3-4): for every weighted layer, the lengths and number of
the gradient paths from the network outputs back to its weights, found by walking the autograd
graph of one forward pass.

A step is one weighted layer (convolution or linear); add, concat, split, slice, upsample, pooling,
normalisation and activations cost none, and a detach() cuts the path. Paths are tracked per channel
range of every tensor, so a partial identity (PRN) or a channel split (CSP) reaches only the
channels it carries, and a layer's output-channel groups can receive different gradient timestamps.
Usage: python -m models.gradpath cfg/models/X.yaml [--img-size 64] [--plot out.png] [--compare Y.yaml ...]
"""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.summary import stage_label

FULL = 1 << 62  # channel bound when a tensor's channel count is unknown
Chans = tuple[tuple[int, int], ...]  # sorted disjoint half-open channel intervals
Profile = dict[int, int]  # path length (weighted layers) -> number of distinct paths

_ELEMENTWISE = re.compile(
    r"(Add|Sub|Rsub|Mul|Div|Neg|Relu|LeakyRelu|Silu|Sigmoid|Tanh|Hardswish|Hardsigmoid|Hardtanh|Mish|"
    r"Gelu|Elu|Celu|Selu|Softplus|Clamp\w*|Pow|Exp|Log|Sqrt|Rsqrt|Abs|Threshold|Prelu\w*|"
    r"\w*BatchNorm\w*|MaxPool\dDWithIndices|AvgPool\dD|Adaptive\w+Pool\dD|Upsample\w+|Clone|ToCopy|"
    r"NativeDropout|Where|Maximum|Minimum|Expand|ReflectionPad\dD|ReplicationPad\dD|Alias|Lerp|"
    r"Reciprocal|Square|Erf|Softsign|LogSigmoid|Hardshrink|Softshrink)Backward\d*")
_MATMUL = re.compile(r"(Addmm|Mm|Bmm|Baddbmm|Linear|Matmul)Backward\d*")
_SPLIT = re.compile(r"(Unsafe)?Split(WithSizes)?Backward\d*")
_VIEWLIKE = re.compile(r"(T|View|Reshape\w*|Permute|Transpose|Expand|Unsqueeze|Squeeze\w*|UnsafeView)Backward\d*")


# ----------------------------------------------------------------------------- channel sets
def _chans(intervals) -> Chans:
    """Sort, drop empty and merge touching intervals."""
    out: list[list[int]] = []
    for a, b in sorted((a, b) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def _clip(cs: Chans, lo: int, hi: int) -> Chans:
    return _chans((max(a, lo), min(b, hi)) for a, b in cs)


def _shift(cs: Chans, d: int) -> Chans:
    return tuple((a + d, b + d) for a, b in cs)


def _shape(node, nr: int) -> tuple[int, ...] | None:
    """Forward shape of output `nr` of an autograd node (None when torch does not expose it)."""
    try:
        return tuple(node._input_metadata[nr].shape)
    except (AttributeError, IndexError, RuntimeError):
        return None


def _nch(shape: tuple[int, ...] | None) -> int:
    return shape[1] if shape is not None and len(shape) >= 2 else FULL


def _signed(v: int) -> int:
    """Slice bounds come back as unsigned 64-bit for negative values."""
    return v - (1 << 64) if v >= 1 << 63 else v


# ----------------------------------------------------------------------------- per-op channel maps
def _map_slice(node, cs: Chans, in_shape) -> Chans:
    size = in_shape[1]
    start, end, step = _signed(node._saved_start), _signed(node._saved_end), node._saved_step
    start = start + size if start < 0 else start
    end = min(end + size if end < 0 else end, size)
    if step == 1:
        return _clip(_shift(cs, start), start, end)
    # strided: cover the span of the picked channels (an over-estimate, never a cut)
    return _clip(tuple((start + a * step, start + (b - 1) * step + 1) for a, b in cs), start, end)


def _map_cat(cs: Chans, edge: int, edges, out_ndim: int, dim: int) -> Chans:
    offset = 0
    for j, (child, nr) in enumerate(edges):
        shape = _shape(child, nr) if child is not None else None
        size = shape[dim] if shape is not None and len(shape) == out_ndim else 0
        if j == edge:
            return _shift(_clip(cs, offset, offset + size), -offset)
        offset += size
    return ()


def _map_split(node, cs: Chans, out_nr: int, in_shape) -> Chans:
    size = in_shape[1]
    if hasattr(node, "_saved_split_sizes"):
        sizes = list(node._saved_split_sizes)
    else:
        s = node._saved_split_size
        sizes = [min(s, size - i) for i in range(0, size, s)]
    offset = sum(sizes[:out_nr])
    return _clip(_shift(cs, offset), offset, offset + sizes[out_nr])


def _map_pad(node, cs: Chans, in_shape) -> Chans:
    pad, pair = list(node._saved_pad), len(in_shape) - 2  # pad pairs run from the last dim back
    before = pad[2 * pair] if len(pad) > 2 * pair + 1 else 0
    return _clip(_shift(cs, -before), 0, in_shape[1])


def _mul_support(node, edge: int) -> Chans | None:
    """Channels a constant (non-trainable) mask lets through, e.g. PRN's binary residual mask."""
    other_edge = node.next_functions[1 - edge][0] if len(node.next_functions) == 2 else 1
    attr = "_saved_other" if edge == 0 else "_saved_self"
    if other_edge is not None or not hasattr(node, attr):
        return None
    mask = getattr(node, attr)
    if not torch.is_tensor(mask) or mask.ndim < 2 or mask.shape[1] == 1:
        return None
    alive = (mask.detach().transpose(0, 1).reshape(mask.shape[1], -1) != 0).any(1).tolist()
    return _chans((i, i + 1) for i, on in enumerate(alive) if on)


def _map_elementwise(node, name: str, cs: Chans, edge: int, in_shape, out_shape) -> Chans:
    if in_shape is None or out_shape is None or len(in_shape) != len(out_shape) or len(in_shape) < 2:
        return ((0, _nch(in_shape)),)
    if in_shape[1] == 1 and out_shape[1] != 1:  # broadcast along channels
        return ((0, 1),)
    cs = _clip(cs, 0, in_shape[1])
    if name.startswith("Mul") and (support := _mul_support(node, edge)) is not None:
        cs = _chans((max(a, c), min(b, d)) for a, b in cs for c, d in support)
    return cs


def _map_reduce(node, cs: Chans, in_shape) -> Chans:
    dims = getattr(node, "_saved_dim", None)
    if in_shape is None or len(in_shape) < 2 or dims is None:
        return ((0, _nch(in_shape)),)
    dims = {d % len(in_shape) for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
    return _clip(cs, 0, in_shape[1]) if 0 not in dims and 1 not in dims else ((0, in_shape[1]),)


def _channel_dim(node, shape) -> bool:
    return shape is not None and len(shape) >= 2 and node._saved_dim % len(shape) == 1


def _map_edge(node, name: str, cs: Chans, out_nr: int, edge: int, in_shape, out_shape) -> Chans:
    """Channels of input `edge` that the gradient on channels `cs` of output `out_nr` reaches."""
    if name.startswith("SliceBackward"):
        return _map_slice(node, cs, in_shape) if _channel_dim(node, in_shape) else cs
    if _SPLIT.fullmatch(name):
        return _map_split(node, cs, out_nr, in_shape) if _channel_dim(node, in_shape) else cs
    if name.startswith("CatBackward"):
        if out_shape is None or not _channel_dim(node, out_shape):
            return ((0, _nch(in_shape)),) if out_shape is None else cs
        return _map_cat(cs, edge, node.next_functions, len(out_shape), 1)
    if name.startswith("ConstantPadNdBackward") and in_shape is not None and len(in_shape) >= 2:
        return _map_pad(node, cs, in_shape)
    if name.startswith("SelectBackward") and _channel_dim(node, in_shape):
        return ((node._saved_index % in_shape[1], node._saved_index % in_shape[1] + 1),)
    if name.startswith(("SumBackward1", "MeanBackward1")):
        return _map_reduce(node, cs, in_shape)
    if _ELEMENTWISE.fullmatch(name):
        return _map_elementwise(node, name, cs, edge, in_shape, out_shape)
    return ((0, _nch(in_shape)),)  # anything else may mix channels: all of them


def _map_conv(node, cs: Chans, in_shape, out_shape) -> Chans:
    """A convolution mixes all input channels of the groups its output channels belong to."""
    c_in, c_out, g = _nch(in_shape), _nch(out_shape), getattr(node, "_saved_groups", 1)
    if g == 1 or FULL in (c_in, c_out):
        return ((0, c_in),)
    og, ig = c_out // g, c_in // g
    return _chans((a // og * ig, ((b - 1) // og + 1) * ig) for a, b in cs)


# ----------------------------------------------------------------------------- weighted layers
class _Params:
    """Looks up which parameter (by name) a weighted autograd node uses."""

    def __init__(self, named: dict[str, torch.Tensor]):
        self.by_id = {id(p): n for n, p in named.items()}
        self.by_ptr = {p.data_ptr(): n for n, p in named.items() if p.ndim >= 2}

    def reach(self, node, hops: int = 3) -> str | None:
        """Parameter name at the end of a short chain of view-like nodes from `node`, if any."""
        for _ in range(hops):
            if node is None:
                return None
            if hasattr(node, "variable"):
                return self.by_id.get(id(node.variable))
            nxt = [c for c, _ in node.next_functions if c is not None]
            if len(nxt) != 1 or not _VIEWLIKE.fullmatch(node.name()):
                return None
            node = nxt[0]
        return None

    def weighted(self, node, name: str) -> tuple[str, set[int]] | None:
        """(layer name, weight edges) for a conv/linear node with a weight, else None."""
        edges = node.next_functions
        if "Convolution" in name and "BackwardBackward" not in name:
            pname = self.reach(edges[1][0]) if len(edges) > 1 else None
            if pname is None and torch.is_tensor(w := getattr(node, "_saved_weight", None)):
                pname = self.by_ptr.get(w.data_ptr())
            return _layer_name(pname, node), set(range(1, len(edges)))
        if _MATMUL.fullmatch(name):
            hits = {i: self.reach(c) for i, (c, _) in enumerate(edges)}
            named = {i: n for i, n in hits.items() if n is not None}
            weights = [n for n in named.values() if not n.endswith("bias")]
            if weights:
                return _layer_name(weights[0], node), set(named)
        return None


def _layer_name(pname: str | None, node) -> str:
    if pname is None:
        return f"<{node.name()}#{node._sequence_nr()}>"
    return pname.rsplit(".", 1)[0] if "." in pname else pname


# ----------------------------------------------------------------------------- the walk
def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor with a grad_fn inside nested lists/tuples/dicts/dataclasses."""
    if torch.is_tensor(obj):
        return [obj] if obj.grad_fn is not None else []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _consumers(roots: list) -> dict:
    """Number of consuming edges of every node reachable from the roots."""
    pending: dict = defaultdict(int)
    seen, stack = set(roots), list(roots)
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is None:
                continue
            pending[child] += 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return pending


def _union(a: Chans, b: Chans) -> Chans:
    return _chans(a + b)


def _add_profile(acc: Profile, prof: Profile, shift: int = 0) -> None:
    for t, n in prof.items():
        acc[t + shift] = acc.get(t + shift, 0) + n


@dataclass
class _Acc:
    """One weighted layer during the walk: its downstream sources and the channels each reaches."""
    order: int
    out_channels: int
    records: dict[Any, Chans]  # source (a downstream weighted node or an output) -> channels


class _Walk:
    """Backward walk from the outputs in reverse topological order. A gradient path is a chain of
    weighted layers ending at an output; weight-free routes between the same two layers count once
    (the channels they carry are united), so a layer's paths = the sum over its distinct
    successors (downstream layers it feeds without a weight in between) of their paths."""

    def __init__(self, outputs: Any, params: _Params):
        self.params, self.layers = params, {}
        self.profile: dict[Any, Profile] = {}  # source -> path lengths seen from its input side
        self.recs: dict = defaultdict(lambda: defaultdict(dict))  # node -> nr -> source -> chans
        outs = list({id(t): t for t in _tensors(outputs)}.values())
        for k, t in enumerate(outs):
            self.profile[("output", k)] = {0: 1}
            self.recs[t.grad_fn][t.output_nr][("output", k)] = ((0, _nch(tuple(t.shape))),)
        self.roots = list({t.grad_fn: None for t in outs})

    def run(self) -> dict[str, _Acc]:
        pending = _consumers(self.roots)
        ready = [r for r in self.roots if pending[r] == 0]
        while ready:
            node = ready.pop()
            for (child, nr), src, cs in self.step(node, self.recs.pop(node, {})):
                cs = _clip(cs, 0, _nch(_shape(child, nr)))
                if cs:
                    slot = self.recs[child][nr]
                    slot[src] = _union(slot.get(src, ()), cs)
            for child, _ in node.next_functions:
                if child is not None:
                    pending[child] -= 1
                    if pending[child] == 0:
                        ready.append(child)
        return self.layers

    def step(self, node, outs: dict[int, dict[Any, Chans]]):
        """(edge, source, channels) that one node passes on to its inputs."""
        name, edges = node.name(), node.next_functions
        weighted = self.params.weighted(node, name)
        if weighted is not None:
            yield from self.weighted_step(node, name, outs.get(0, {}), *weighted)
            return
        if hasattr(node, "variable"):
            return
        for nr, records in outs.items():
            out_shape = _shape(node, nr)
            for i, (child, cnr) in enumerate(edges):
                if child is not None:
                    in_shape = _shape(child, cnr)
                    for src, cs in records.items():
                        yield (child, cnr), src, _map_edge(node, name, cs, nr, i, in_shape, out_shape)

    def weighted_step(self, node, name: str, records: dict[Any, Chans], lname: str, weight_edges: set[int]):
        out_shape = _shape(node, 0)
        acc = self.layers.setdefault(lname, _Acc(node._sequence_nr(), _nch(out_shape), {}))
        acc.order = min(acc.order, node._sequence_nr())
        prof: Profile = {}
        for src, cs in records.items():
            acc.records[src] = _union(acc.records.get(src, ()), cs)
            _add_profile(prof, self.profile[src], 1)
        if not prof:
            return
        self.profile[node] = prof
        reached = _chans(iv for cs in records.values() for iv in cs)
        for i, (child, nr) in enumerate(node.next_functions):
            if child is None or i in weight_edges:
                continue
            in_shape = _shape(child, nr)
            cs = _map_conv(node, reached, in_shape, out_shape) if "Convolution" in name else ((0, _nch(in_shape)),)
            yield (child, nr), node, cs


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ChannelGroup:
    """Output channels start:end of a layer that receive the same gradient paths."""
    start: int
    end: int
    timestamps: tuple[int, ...]  # empty: no gradient reaches these channels
    sources: int


@dataclass(frozen=True)
class LayerPaths:
    """Gradient paths to one weighted layer: timestamps = distinct path lengths (in weighted
    layers, the layer itself included), sources = number of distinct paths."""
    name: str
    stage: str
    order: int
    out_channels: int
    timestamps: tuple[int, ...]
    sources: int
    groups: tuple[ChannelGroup, ...]

    @property
    def shortest(self) -> int:
        return self.timestamps[0]

    @property
    def longest(self) -> int:
        return self.timestamps[-1]

    @property
    def timestamp_sets(self) -> int:
        """Distinct timestamp sets over the output-channel groups (1 unless channels are partial)."""
        return len({g.timestamps for g in self.groups if g.timestamps})


@dataclass
class GradPathReport:
    layers: list[LayerPaths]  # forward order
    unreached: list[str]  # weighted modules that no gradient path reaches
    params: int = 0

    def __post_init__(self):
        if not self.layers:
            raise ValueError("gradpath: no weighted layer is reached by a gradient path from the outputs")

    def __getitem__(self, name: str) -> LayerPaths:
        return next(lp for lp in self.layers if lp.name == name)

    @property
    def max_shortest(self) -> int:
        """The longest of all layers' shortest gradient paths (the paper's network-level rule)."""
        return max(lp.shortest for lp in self.layers)

    @property
    def longest(self) -> int:
        """The longest gradient path of the network."""
        return max(lp.longest for lp in self.layers)

    @property
    def timestamp_sets(self) -> int:
        return sum(lp.timestamp_sets for lp in self.layers)


def _groups(records: dict[Any, Chans], profile: dict[Any, Profile], c_out: int) -> tuple[ChannelGroup, ...]:
    """Split 0:c_out at every record edge; each piece sums the paths of the sources reaching it."""
    cuts = sorted({0, c_out} | {x for cs in records.values() for iv in cs for x in iv if 0 <= x <= c_out})
    groups: list[ChannelGroup] = []
    for a, b in zip(cuts, cuts[1:]):
        prof: Profile = {}
        for src, cs in records.items():
            if any(lo <= a and b <= hi for lo, hi in cs):
                _add_profile(prof, profile[src], 1)
        ts, n = tuple(sorted(prof)), sum(prof.values())
        if groups and groups[-1].timestamps == ts and groups[-1].sources == n:
            groups[-1] = ChannelGroup(groups[-1].start, b, ts, n)
        else:
            groups.append(ChannelGroup(a, b, ts, n))
    return tuple(groups)


def analyze_outputs(outputs: Any, model: nn.Module) -> GradPathReport:
    """Gradient paths for the weighted layers of `model` from `outputs` (tensors with grad_fn,
    possibly nested in lists/dicts/dataclasses) of one forward pass."""
    params = dict(model.named_parameters())
    walk = _Walk(outputs, _Params(params))
    layers = walk.run()
    found = []
    for name, acc in layers.items():
        prof: Profile = {}
        for src in acc.records:
            _add_profile(prof, walk.profile[src], 1)
        if prof:
            groups = _groups(acc.records, walk.profile, acc.out_channels)
            found.append(LayerPaths(name, stage_label(model, name), acc.order, acc.out_channels,
                                    tuple(sorted(prof)), sum(prof.values()), groups))
    weighted = (nn.modules.conv._ConvNd, nn.Linear)
    unreached = [n for n, m in model.named_modules() if isinstance(m, weighted) and n not in layers
                 and m.weight.requires_grad]
    return GradPathReport(sorted(found, key=lambda lp: lp.order), unreached,
                          sum(p.numel() for p in params.values()))


def analyze(model: nn.Module, x: torch.Tensor | None = None, img_size: int = 64) -> GradPathReport:
    """One training-mode forward pass on x (default zeros (2,3,img_size,img_size)); the model's
    BatchNorm statistics and train/eval mode are left as they were."""
    if x is None:
        p = next(model.parameters())
        x = torch.zeros(2, 3, img_size, img_size, device=p.device, dtype=p.dtype)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            return analyze_outputs(model(x), model)
    finally:
        model.load_state_dict(buffers, strict=False)
        model.train(was_training)
