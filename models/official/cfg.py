"""Translate an official YOLOv5 / YOLOv7 cfg dict (the `yaml` attribute an official checkpoint carries)
into a gradpath cfg, and say where each of our layers' tensors lives in the official model.

Official YOLOv7 cfgs spell every ELAN block and max-pool transition as rows of single convs joined
by Concat; they are recognised and written as our `ELAN` and `MPDown` blocks (so yolov7-seg becomes
cfg/models/yolor-elan-seg.yaml row for row). Every other official row has a one-row counterpart.
Translation reads the cfg as data: no row or argument is evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from models.parser import CfgError, scale_width

# Official activation arguments (strings in the cfg) -> our activation names.
ACTIVATIONS = {"nn.SiLU()": "silu", "nn.LeakyReLU(0.1)": "lrelu", "nn.ReLU()": "relu", "nn.Identity()": "none"}
HEADS = ("Detect", "Segment", "IDetect", "ISegment", "IAuxDetect")
PLAIN = ("Conv", "RepConv", "C3", "SPPF", "SPP", "SPPCSPC", "Upsample", "Concat", "MP", "SP", "ReOrg", "DownC",
         "Shortcut")
# Tensors of one of our modules whose official counterpart has another name.
RENAMES = {
    "C3": (("cv4.", "cv3."),),
    "DownC": (("cv1.", "cv3."), ("cv2.", "cv1."), ("cv3.", "cv2.")),
    "RepConv": (("dense.conv.", "rbr_dense.0."), ("dense.bn.", "rbr_dense.1."), ("one.conv.", "rbr_1x1.0."),
                ("one.bn.", "rbr_1x1.1."), ("identity.", "rbr_identity.")),
}


@dataclass(frozen=True)
class Source:
    """Our tensors under `ours` (a module path inside our layer, '' = all of it) are the official
    layer `layer`'s tensors under `theirs`."""

    ours: str
    layer: int
    theirs: str


@dataclass
class Row:
    """An official row with absolute `from` indices and its module name without 'nn.'."""

    index: int
    froms: list[int]
    n: int
    kind: str
    args: list

    def conv(self, k: int | None = None, s: int = 1) -> bool:
        """A single-input Conv row with kernel k (any if None) and stride s."""
        kernel = self.args[1] if len(self.args) > 1 else 1
        stride = self.args[2] if len(self.args) > 2 else 1
        return self.kind == "Conv" and len(self.froms) == 1 and (k is None or kernel == k) and stride == s


@dataclass
class Translation:
    """Our cfg dict, and per our layer where its tensors come from."""

    cfg: dict
    sources: list[list[Source]]
    official_index: dict[int, int] = field(default_factory=dict)  # official row -> our row (outputs only)
    skipped: dict[str, str] = field(default_factory=dict)  # official tensor-name prefix -> why it is unused


def _rows(cfg: dict, source: str) -> list[Row]:
    rows = []
    for i, r in enumerate(list(cfg["backbone"]) + list(cfg.get("head") or [])):
        if not (isinstance(r, (list, tuple)) and len(r) == 4):
            raise CfgError(f"{source}: official row {i}: expected [from, number, module, args], got {r!r}")
        f, n, kind, args = r
        froms = [f] if isinstance(f, int) else list(f)
        kind = str(kind).removeprefix("nn.")
        rows.append(Row(i, [j if j >= 0 else i + j for j in froms], int(n), kind, list(args)))
    return rows


def _act(rows: list[Row], cfg: dict, source: str) -> str:
    """The one activation of every conv in the cfg (per-row or the cfg's `activation`)."""
    default = ACTIVATIONS.get(str(cfg.get("activation", "nn.SiLU()")))
    if default is None:
        raise CfgError(f"{source}: official activation {cfg.get('activation')!r} is not supported "
                       f"(known: {', '.join(ACTIVATIONS)})")
    found = set()
    for r in rows:
        if r.kind in ("Conv", "RepConv"):
            named = [a for a in r.args[3:] if isinstance(a, str) and a.startswith("nn.")]
            if named and named[0] not in ACTIVATIONS:
                raise CfgError(f"{source}: official row {r.index} ({r.kind}): activation {named[0]} is not supported")
            found.add(ACTIVATIONS[named[0]] if named else default)
    if len(found) > 1:
        raise CfgError(f"{source}: the official cfg mixes activations {sorted(found)}; gradpath cfgs use one")
    return found.pop() if found else default


def _consumers(rows: list[Row]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for r in rows:
        for j in r.froms:
            out.setdefault(j, set()).add(r.index)
    return out


@dataclass
class Group:
    """Official rows start..end (inclusive) written as our `rows`: [froms, n, block, args] with
    official froms, where None stands for our previous row."""

    start: int
    end: int
    rows: list[tuple[list[int | None], int, str, list]]
    sources: list[list[Source]]


def _internal_only(members: set[int], outputs: set[int], consumers: dict[int, set[int]]) -> bool:
    """Every member that is not an output is read only inside the group."""
    return all(consumers.get(j, set()) <= members for j in members - outputs)


def _elan(rows: list[Row], c: int, consumers: dict[int, set[int]]) -> Group | None:
    """An ELAN spelled out: two 1x1 convs of one input, a chain of 3x3 convs from the second, a
    Concat of [taps newest first, 2nd 1x1, 1st 1x1] and a 1x1 transition right after it."""
    cat = rows[c]
    seq = cat.froms[::-1]
    if cat.kind != "Concat" or cat.args[:1] not in ([1], []) or len(seq) < 3 or c + 1 >= len(rows):
        return None
    cv1, cv2, taps, tr = rows[seq[0]], rows[seq[1]], seq[2:], rows[c + 1]
    if not (tr.conv(1) and tr.froms == [c] and cv1.conv(1) and cv2.conv(1) and cv1.froms == cv2.froms):
        return None
    chain = list(range(cv2.index + 1, taps[-1] + 1))
    start = min(cv1.index, cv2.index)
    if sorted([cv1.index, cv2.index, *chain]) != list(range(start, c)) or taps[-1] != c - 1:
        return None
    if not all(rows[j].conv(3) and rows[j].froms == [j - 1] for j in chain):
        return None
    tap = chain.index(taps[0]) + 1
    if [chain.index(t) for t in taps] != list(range(tap - 1, len(chain), tap)):
        return None
    members = set(range(start, c + 2))
    if not _internal_only(members, {c + 1}, consumers):
        return None
    c_, c_chain = cv1.args[0], rows[chain[0]].args[0]
    if cv2.args[0] != c_ or any(rows[j].args[0] != c_chain for j in chain):
        return None
    args = [tr.args[0], c_, len(chain), tap] + ([c_chain] if c_chain != c_ else [])
    src = [Source("cv1.", cv1.index, ""), Source("cv2.", cv2.index, ""), Source("transition.", tr.index, "")]
    src += [Source(f"chain.{k}.", j, "") for k, j in enumerate(chain)]
    return Group(start, c + 1, [(cv1.froms, 1, "ELAN", args)], [src])


def _mpdown(rows: list[Row], m: int, consumers: dict[int, set[int]], width: float) -> Group | None:
    """YOLOv7's max-pool transition: MP; 1x1 of the pooled; 1x1 of the input; 3x3 stride 2 of that;
    Concat [stride-2 conv, pooled conv, extra inputs...]."""
    if m + 4 >= len(rows) or rows[m].kind != "MP" or rows[m].args not in ([], [2]):
        return None
    pool, a, b, s2, cat = rows[m:m + 5]
    x = pool.froms
    if not (a.conv(1) and a.froms == [m] and b.conv(1) and b.froms == x and s2.conv(3, 2) and s2.froms == [b.index]):
        return None
    if cat.kind != "Concat" or cat.froms[:2] != [s2.index, a.index] or cat.args[:1] not in ([1], []):
        return None
    c = a.args[0]
    if b.args[0] != c or s2.args[0] != c or scale_width(2 * c, width) // 2 != scale_width(c, width):
        return None
    if not _internal_only(set(range(m, m + 5)), {m + 4}, consumers):
        return None
    src = [Source("cv1.", a.index, ""), Source("cv2.", b.index, ""), Source("cv3.", s2.index, "")]
    extra = cat.froms[2:]
    if not extra:
        return Group(m, m + 4, [(x, 1, "MPDown", [2 * c])], [src])
    # the Concat's extra inputs follow in a Concat row of their own
    return Group(m, m + 4, [(x, 1, "MPDown", [2 * c]), ([None, *extra], 1, "Concat", [1])], [src, []])


def _plain(r: Row, source: str) -> tuple[str, list]:
    """Our block and args for a single official row."""
    a = r.args
    where = f"{source}: official row {r.index} ({r.kind})"
    positional = [None if x == "None" else x for x in a if not (isinstance(x, str) and x.startswith("nn."))]
    if r.kind == "Conv":
        if len(positional) > 5 and positional[5] not in (1, True):  # YOLOv5's dilation
            raise CfgError(f"{where}: dilated convs are not supported")
        conv = positional[:5]
        while len(conv) > 3 and conv[-1] == (None, 1)[len(conv) - 4]:  # trailing defaults: p=None, g=1
            conv.pop()
        return "Conv", conv
    if r.kind == "RepConv":
        if len(a) > 6 and a[6] is True:
            raise CfgError(f"{where}: a deployed (fused) RepConv; convert the training checkpoint")
        return "RepConv", positional[:3]
    if r.kind == "C3":
        if len(a) > 2 and a[2] != 1:
            raise CfgError(f"{where}: grouped C3 convs are not supported")
        return "C3", [a[0], a[1] if len(a) > 1 else True] + ([a[3]] if len(a) > 3 else [])
    if r.kind == "SPPCSPC":
        if len(a) > 4 and a[4] != 0.5:
            raise CfgError(f"{where}: SPPCSPC with e != 0.5 is not supported")
        return "SPPCSPC", [a[0]] + ([a[5]] if len(a) > 5 else [])
    if r.kind == "Upsample":
        if (a + [None, 2, "nearest"][len(a):])[2] != "nearest" or a[0] not in (None, "None"):
            raise CfgError(f"{where}: only nearest x2-style upsampling by a factor is supported")
        return "Upsample", [a[1] if len(a) > 1 else 2]
    if r.kind == "SP":
        if len(a) > 1 and a[1] != 1:
            raise CfgError(f"{where}: only stride-1 SP pooling is supported")
        return "SP", a[:1]
    if r.kind == "DownC":
        return "DownC", [a[0]] + ([a[2]] if len(a) > 2 else [])
    if r.kind == "Shortcut":
        return "Sum", []
    return r.kind, a  # SPPF, SPP, Concat, MP, ReOrg take the official args as they are


def _head(r: Row, anchors: list, nl: int, source: str) -> tuple[str, list, list[Source]]:
    a = r.args
    nm, npr = (int(a[2]), int(a[3])) if r.kind in ("Segment", "ISegment") else (0, 0)
    # u7's ISegment adds ImplicitA but never applies its ImplicitM; YOLOv7's IDetect applies both
    implicit = {"Detect": False, "Segment": False, "IDetect": True, "ISegment": "a", "IAuxDetect": True}[r.kind]
    args = ["nc", anchors, nm, npr, implicit]
    src = [Source("m.", r.index, "m.")]
    if implicit:
        src.append(Source("ia.", r.index, "ia."))
    if implicit is True:
        src.append(Source("im.", r.index, "im."))
    if nm:
        src.append(Source("proto.", r.index, "proto."))
    if r.kind == "IAuxDetect":
        if len(r.froms) != 2 * nl:
            raise CfgError(f"{source}: official row {r.index} (IAuxDetect): expected {2 * nl} inputs, got {len(r.froms)}")
        args.append(True)
        src.append(Source("aux.", r.index, "m2."))
    elif len(r.froms) != nl:
        raise CfgError(f"{source}: official row {r.index} ({r.kind}): {len(r.froms)} inputs for {nl} anchor levels")
    return "AnchorHead", args, src


def translate(official: dict, anchors: list | None = None, source: str = "<official cfg>") -> Translation:
    """Our cfg (and tensor sources) for an official cfg dict. `anchors` (pixels, one list per level)
    replaces the cfg's, e.g. with the anchors a checkpoint really holds."""
    rows = _rows(official, source)
    width = float(official.get("width_multiple", 1.0))
    anchors = anchors if anchors is not None else official.get("anchors")
    if not (isinstance(anchors, list) and anchors and all(isinstance(x, list) for x in anchors)):
        raise CfgError(f"{source}: the official cfg has no anchor lists (anchors: {anchors!r})")
    for r in rows:
        if r.kind not in PLAIN + HEADS:
            raise CfgError(f"{source}: official row {r.index}: module {r.kind} is not supported "
                           f"(supported: {', '.join(PLAIN + HEADS)})")
    if rows[-1].kind not in HEADS or any(r.kind in HEADS for r in rows[:-1]):
        raise CfgError(f"{source}: the last official row must be the only head ({', '.join(HEADS)})")
    consumers = _consumers(rows)
    groups: dict[int, Group] = {}
    for r in rows:
        g = _elan(rows, r.index, consumers) or _mpdown(rows, r.index, consumers, width)
        if g and not any(g.start <= k.end and k.start <= g.end for k in groups.values()):
            groups[g.start] = g

    ours: list[tuple[list[int | None], int, str, list]] = []  # froms still official (None: our previous row)
    sources: list[list[Source]] = []
    where: dict[int, int] = {}
    i = 0
    while i < len(rows):
        if i in groups:
            g = groups[i]
            ours += g.rows
            sources += g.sources
            where[g.end] = len(ours) - 1
            i = g.end + 1
            continue
        r = rows[i]
        if r.kind in HEADS:
            block, args, src = _head(r, anchors, len(anchors), source)
        else:
            block, args = _plain(r, source)
            src = [Source("", i, "")] + [Source(o, i, t) for o, t in RENAMES.get(r.kind, ())]
        ours.append((r.froms, r.n, block, args))
        sources.append(src if r.kind not in ("Upsample", "Concat", "MP", "SP", "ReOrg", "Shortcut") else [])
        where[i] = len(ours) - 1
        i += 1

    def our_from(k: int, f: int | None) -> int:
        if f is None:
            return k - 1
        if f == -1 and k == 0:
            return -1  # the input image
        if f not in where:
            raise CfgError(f"{source}: official row {f} is read from outside its block; cannot translate")
        return where[f]

    layers = []
    for k, (froms, n, block, args) in enumerate(ours):
        idx = [our_from(k, f) for f in froms]
        idx[0] = -1 if idx[0] == k - 1 else idx[0]  # the previous row reads as -1 (first input only)
        layers.append([idx[0] if len(idx) == 1 else idx, n, block, args])
    n_backbone = where.get(len(official["backbone"]) - 1, -1) + 1
    cfg = {"nc": int(official.get("nc", 80)), "depth_multiple": float(official.get("depth_multiple", 1.0)),
           "width_multiple": width, "act": _act(rows, official, source), "anchors": anchors,
           "backbone": layers[:n_backbone], "head": layers[n_backbone:]}
    head = rows[-1].index
    skipped = {f"model.{head}.anchor_grid": "the anchor grid (derived from the anchors)"}
    if rows[-1].kind == "ISegment":
        skipped[f"model.{head}.im."] = "ImplicitM (the official ISegment forward never applies it)"
    return Translation(cfg, sources, where, skipped)
