"""Optimal one-to-one assignment of tracks to detections (scipy's linear_sum_assignment)."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def assign(similarity: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """(T,D) similarity -> (track, detection) pairs of the assignment with the largest total
    similarity, keeping only pairs at or above `minimum`. Pairs below it are made impossible
    before solving, so a weak pair never displaces a good one."""
    if similarity.size == 0:
        return []
    allowed = similarity >= minimum
    if not allowed.any():
        return []
    rows, cols = linear_sum_assignment(np.where(allowed, similarity, -1e6), maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]
