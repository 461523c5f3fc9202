"""The paper's printed figures (../shared/PAPER.md, the paper's Tables 3-8), one row per paper cfg in
cfg/models: benchmarks/paper_tables.py prints them beside our measurements and
tests/unit/test_model_cfgs.py holds each cfg's size to them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    """One printed row: GFLOPs at 640, parameters in millions (None where not printed), COCO val2017
    AP^box and AP^mask in percent."""

    gflops: float
    params: float | None
    ap_box: float
    ap_mask: float


PAPER = {
    "yolov5l-seg": PaperRow(147.7, 47.9, 49.1, 40.0),
    "yolov5x-seg": PaperRow(265.7, 88.8, 50.9, 41.4),
    "yolor-v3-seg": PaperRow(194.6, 64.3, 49.5, 40.9),
    "yolor-prn-seg": PaperRow(194.6, 64.3, 50.0, 41.0),
    "yolor-csp-seg": PaperRow(159.0, 54.3, 51.0, 41.1),
    "yolor-csp-fusion-first-seg": PaperRow(158.1, None, 50.8, 41.0),
    "yolor-csp-fusion-last-seg": PaperRow(155.6, None, 50.6, 40.9),
    "yolor-csp-fusion-none-seg": PaperRow(154.8, None, 50.5, 40.9),
    "yolor-elan-11-seg": PaperRow(126.4, None, 50.2, 40.6),
    "yolor-elan-seg": PaperRow(143.2, 34.5, 51.4, 41.5),
    "yolor-elan-22-seg": PaperRow(164.0, None, 51.8, 41.6),
    "yolor-elan-af-seg": PaperRow(172.6, 45.9, 53.0, 43.3),
    "yolor-csp-stopgrad-a-seg": PaperRow(159.0, None, 48.8, 39.5),
    "yolor-csp-stopgrad-b-seg": PaperRow(159.0, None, 47.7, 38.7),
    "deep-vovnet-elan-seg": PaperRow(253.4, None, 53.3, 42.9),
    "deep-vovnet-elan-csp-seg": PaperRow(236.5, None, 53.4, 42.9),
}

# Parameters (millions) where the design has another count than the paper prints, or one it does not print.
DESIGN_PARAMS = {
    # Table 8 prints 34.5M, but ELAN-{2,1}s at the printed 143.2 GFLOPs (the official u7 yolov7-seg.yaml
    # graph, 38,292,218 parameters by ../shared/official/README.md) has 38.29M; 34.5M is ELAN-{1,1}s's.
    "yolor-elan-seg": 38.29,
    "yolor-elan-11-seg": 34.5,  # Table 7 prints no parameters: Table 8's 34.5M, see above
    # Table 3 prints no parameters: a stop gradient adds none to YOLOR-CSP's 54.3M
    "yolor-csp-stopgrad-a-seg": 54.3,
    "yolor-csp-stopgrad-b-seg": 54.3,
}


def design_params(name: str) -> float | None:
    """The parameter count (millions) the cfg `name` has by design: DESIGN_PARAMS, else the printed one."""
    return DESIGN_PARAMS.get(name, PAPER[name].params)
