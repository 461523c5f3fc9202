"""MOT metrics of one sequence, by TrackEval (the HOTA authors' reference code): CLEAR (MOTA, ID
switches, FP, FN, mostly tracked / lost), Identity (IDF1) and HOTA. Class-agnostic: an object
followed under the wrong class still counts as followed.

Ground-truth rows whose consider flag is 0, or whose visibility is below `min_visibility`, are
ignored as the MOT benchmarks do: they count as neither missed nor matched, and a tracker box
that matches one of them is dropped rather than counted as a false positive."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from engine.eval.mot.files import MotTable
from utils.geometry import box_iou


@dataclass(frozen=True)
class MotMetrics:
    """Fractions in 0..1 (MOTA can be negative); counts are boxes or ids."""

    mota: float
    motp: float
    idf1: float
    idp: float
    idr: float
    hota: float
    deta: float
    assa: float
    id_switches: int
    fp: int
    fn: int
    tp: int
    mostly_tracked: int
    partly_tracked: int
    mostly_lost: int
    fragmentations: int
    gt_ids: int
    tracker_ids: int
    frames: int

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"MOTA {100 * self.mota:.1f}  IDF1 {100 * self.idf1:.1f}  HOTA {100 * self.hota:.1f} "
                f"(DetA {100 * self.deta:.1f} AssA {100 * self.assa:.1f})  ID switches {self.id_switches}  "
                f"FP {self.fp}  FN {self.fn}  mostly tracked {self.mostly_tracked}/{self.gt_ids}  "
                f"mostly lost {self.mostly_lost}  tracker ids {self.tracker_ids}  frames {self.frames}")

    def table(self) -> str:
        """A two-line table: percentages for the scores, counts for the rest (MT/PT/ML: ground-truth
        objects followed over 80 %, 20-80 %, under 20 % of their frames)."""
        cells = {"MOTA": f"{100 * self.mota:.1f}", "IDF1": f"{100 * self.idf1:.1f}", "HOTA": f"{100 * self.hota:.1f}",
                 "DetA": f"{100 * self.deta:.1f}", "AssA": f"{100 * self.assa:.1f}", "IDSW": self.id_switches,
                 "FP": self.fp, "FN": self.fn, "MT": self.mostly_tracked, "PT": self.partly_tracked,
                 "ML": self.mostly_lost, "GT ids": self.gt_ids, "ids": self.tracker_ids, "frames": self.frames}
        width = {k: max(len(k), len(str(v))) for k, v in cells.items()}
        return "\n".join("  ".join(f"{x:>{width[k]}}" for k, x in zip(cells, row)) for row in (cells, cells.values()))


def _xyxy(boxes: np.ndarray) -> torch.Tensor:
    b = torch.from_numpy(boxes.astype(np.float64))
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,4) x (M,4) boxes as x, y, w, h -> (N,M) IoU."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_iou(_xyxy(a), _xyxy(b)).numpy()


def _drop_ignored(gt: MotTable, tr: MotTable, ignore: np.ndarray, iou: float) -> np.ndarray:
    """Tracker rows to keep: those not matched (optimally, at `iou`) to an ignored ground-truth row."""
    from scipy.optimize import linear_sum_assignment

    keep = np.ones(len(tr), bool)
    for f in np.unique(gt.frames[ignore]):
        g, t = np.nonzero(gt.frames == f)[0], np.nonzero(tr.frames == f)[0]
        sim = iou_xywh(gt.boxes[g], tr.boxes[t])
        if sim.size == 0:
            continue
        rows, cols = linear_sum_assignment(np.where(sim >= iou, sim, 0.0), maximize=True)
        hit = (sim[rows, cols] >= iou) & ignore[g[rows]]
        keep[t[cols[hit]]] = False
    return keep


def _contiguous(ids: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(ids, return_inverse=True)
    return inv.astype(np.int64), len(uniq)


def trackeval_data(gt: MotTable, tr: MotTable, min_visibility: float = 0.0, iou: float = 0.5) -> dict:
    """The per-timestep dict TrackEval's metrics take, after removing ignored rows."""
    ignore = (gt.conf == 0) | (gt.visibility < min_visibility)
    tr = tr.select(_drop_ignored(gt, tr, ignore, iou)) if ignore.any() else tr
    gt = gt.select(~ignore)
    gid, n_gid = _contiguous(gt.ids)
    tid, n_tid = _contiguous(tr.ids)
    frames = int(max(gt.frames.max(initial=0), tr.frames.max(initial=0)))
    data = {"gt_ids": [], "tracker_ids": [], "similarity_scores": [], "num_timesteps": frames,
            "num_gt_ids": n_gid, "num_tracker_ids": n_tid, "num_gt_dets": len(gt), "num_tracker_dets": len(tr)}
    g_by, t_by = np.argsort(gt.frames, kind="stable"), np.argsort(tr.frames, kind="stable")
    g_cut = np.searchsorted(gt.frames[g_by], np.arange(1, frames + 2))
    t_cut = np.searchsorted(tr.frames[t_by], np.arange(1, frames + 2))
    for f in range(frames):
        g, t = g_by[g_cut[f]:g_cut[f + 1]], t_by[t_cut[f]:t_cut[f + 1]]
        data["gt_ids"].append(gid[g])
        data["tracker_ids"].append(tid[t])
        data["similarity_scores"].append(iou_xywh(gt.boxes[g], tr.boxes[t]))
    return data


def evaluate(gt: MotTable, tracks: MotTable, iou: float = 0.5, min_visibility: float = 0.0) -> MotMetrics:
    """Score one sequence's tracks against its ground truth (matches at IoU >= `iou` for CLEAR
    and IDF1; HOTA averages its own thresholds 0.05..0.95)."""
    from trackeval.metrics import CLEAR, HOTA, Identity

    data = trackeval_data(gt, tracks, min_visibility, iou)
    cfg = {"THRESHOLD": iou, "PRINT_CONFIG": False}
    clear, ident, hota = CLEAR(cfg).eval_sequence(data), Identity(cfg).eval_sequence(data), HOTA().eval_sequence(data)
    return MotMetrics(
        mota=float(clear["MOTA"]), motp=float(clear["MOTP"]), idf1=float(ident["IDF1"]), idp=float(ident["IDP"]),
        idr=float(ident["IDR"]), hota=float(np.mean(hota["HOTA"])), deta=float(np.mean(hota["DetA"])),
        assa=float(np.mean(hota["AssA"])), id_switches=int(clear["IDSW"]), fp=int(clear["CLR_FP"]),
        fn=int(clear["CLR_FN"]), tp=int(clear["CLR_TP"]), mostly_tracked=int(clear["MT"]),
        partly_tracked=int(clear["PT"]), mostly_lost=int(clear["ML"]), fragmentations=int(clear["Frag"]),
        gt_ids=data["num_gt_ids"], tracker_ids=data["num_tracker_ids"], frames=data["num_timesteps"])
