"""Command-line arguments checked where they enter, by the same rules in train.py, val.py, detect.py
and export.py: argparse types that name the allowed range, errors in one line, the official
YOLOv5/YOLOv7 flags that change nothing here (accepted, one warning each saying what happens
instead) or that cannot be honoured (a one-line error), and the image size rounded up to the
model's stride. Pure Python: `--help` imports nothing heavy."""
from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from typing import Any, Callable

LOG = logging.getLogger("gradpath.args")
_DEVICE = re.compile(r"^(cpu|cuda|(cuda:)?\d+(,(cuda:)?\d+)*)?$")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors in one line (`prog: error: ...`, exit 2, no usage block) and two kinds
    of official flags: ignored ones (add_ignored) and refused ones (add_refused)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ignored: dict[str, tuple[str, str]] = {}  # dest -> (flag, what happens instead)
        self._compat = self.add_argument_group("official YOLOv5/YOLOv7 flags without an effect here")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")

    def add_ignored(self, *flags: str, instead: str, nargs: int | str = 0, **kwargs) -> None:
        """Accept `flags` (a switch with nargs=0, else taking values as argparse's `nargs`); when
        given, one warning names the flag and says `instead`; the value never reaches the namespace."""
        dest = "ignored_" + flags[0].lstrip("-").replace("-", "_")
        kind = dict(action="store_const", const=True) if nargs == 0 else dict(nargs=nargs, **kwargs)
        if nargs == "?":
            kind.setdefault("const", True)  # given alone: still given
        self._compat.add_argument(*flags, dest=dest, default=None, help=f"no effect: {instead}", **kind)
        self._ignored[dest] = (flags[0], instead)

    def add_refused(self, *flags: str, reason: str, nargs: int | str = 0, accept: Any = None, **kwargs) -> None:
        """A flag we cannot honour: giving it is a one-line error saying why. `accept`: the one
        value that asks for what happens here anyway (`--vid-stride 1`), taken without a word."""
        parser = self

        class Refuse(argparse.Action):
            def __call__(self, _parser, namespace, values, option_string=None):
                if accept is not None and values == accept:
                    return
                shown = "" if values is None or values == [] or nargs == 0 else f" {_shown(values)}"
                parser.error(f"{option_string}{shown}: {reason}")

        extra = dict(nargs=nargs) if nargs != 0 else dict(nargs=0)
        self._compat.add_argument(*flags, dest="refused_" + flags[0].lstrip("-").replace("-", "_"), default=None,
                                  action=Refuse, help=f"refused: {reason}", **extra, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        for dest, (flag, instead) in self._ignored.items():
            if getattr(ns, dest, None) is not None:
                print(f"{self.prog}: warning: {flag} has no effect here: {instead}", file=sys.stderr)
        for dest in [d for d in vars(ns) if d.startswith(("ignored_", "refused_"))]:
            delattr(ns, dest)
        return ns, extra


def _shown(values: Any) -> str:
    return " ".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(text) from None  # argparse: "invalid int value: 'text'"


def at_least(low: int) -> Callable[[str], int]:
    """A whole number >= low."""

    def parse(text: str) -> int:
        value = _whole(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def number_in(low: float, high: float, high_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] ([low, high) with high_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(text) from None
        if not (math.isfinite(value) and low <= value and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def batch_size(text: str) -> int:
    """Images per batch: at least 1 (-1 is the official AutoBatch, which does not exist here)."""
    value = _whole(text)
    if value == -1:
        raise argparse.ArgumentTypeError("-1 (AutoBatch) is not available here: give a number of images")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


batch_size.__name__ = "int"


def save_period(text: str) -> int:
    """-1 (never) or a positive number of epochs."""
    value = _whole(text)
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError(f"must be -1 (off) or a positive number of epochs, got {value}")
    return value


save_period.__name__ = "int"


def device(text: str) -> str:
    """'' (auto), cpu, cuda, 0, cuda:0 or a list such as 0,1,2,3 (select_device checks what exists)."""
    if not _DEVICE.match(str(text).strip().lower().replace(" ", "")):
        raise argparse.ArgumentTypeError(f"expected cpu, a CUDA index such as 0, or a list such as 0,1,2,3, "
                                         f"got {text!r}")
    return text


def freeze_item(text: str) -> int | str:
    """One --freeze value: 'backbone' or a layer index / count (>= 0)."""
    if text == "backbone":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'backbone' or whole numbers, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"layer numbers are at least 0, got {value}")
    return value


class Freeze(argparse.Action):
    """--freeze N (the first N layers, as YOLOv5/YOLOv7 read one number), --freeze 0 1 2 (those
    layers) or --freeze backbone; stored as a tuple of ints or the string 'backbone'."""

    def __call__(self, parser, namespace, values, option_string=None):
        if "backbone" in values:
            if len(values) > 1:
                parser.error(f"argument {option_string}: 'backbone' goes alone, got {_shown(values)}")
            setattr(namespace, self.dest, "backbone")
            return
        setattr(namespace, self.dest, tuple(values))


def add_img_size(parser: argparse.ArgumentParser, second: str | None = None, help: str = "") -> None:
    """--img-size/--img/--imgsz, one size or two: with `second` (train.py, as YOLOv7's
    `--img 640 640`: train and test sizes) the second value goes to that destination; elsewhere
    two values (YOLOv5's h, w) must be equal, as images are letterboxed to one long side here."""

    class ImgSize(argparse.Action):
        def __call__(self, _parser, namespace, values, option_string=None):
            if len(values) > 2:
                _parser.error(f"argument {option_string}: one or two sizes, got {_shown(values)}")
            if len(values) == 2 and second is None and values[0] != values[1]:
                _parser.error(f"argument {option_string}: {_shown(values)}: one size only (images keep their aspect "
                              f"ratio, letterboxed to that long side)")
            setattr(namespace, self.dest, values[0])
            if second is not None:
                setattr(namespace, second, values[-1] if len(values) == 2 else None)

    parser.add_argument("--img-size", "--img", "--imgsz", dest="img_size", type=at_least(1), nargs="+", default=None,
                        action=ImgSize, metavar="SIZE", help=help)
    if second is not None:
        parser.set_defaults(**{second: None})


def round_to_stride(size: int, stride: int, flag: str = "--img-size") -> int:
    """`size` rounded up to a multiple of the model's stride (at least one stride), with a
    warning when that changes it, as the official scripts do."""
    fixed = max(math.ceil(size / stride) * stride, stride)
    if fixed != size:
        LOG.warning("%s %d is not a multiple of the model's stride %d: using %d", flag, size, stride, fixed)
    return fixed

