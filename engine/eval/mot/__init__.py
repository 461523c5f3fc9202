"""MOT files and tracking metrics (MOTA, IDF1, HOTA, ID switches) for `val.py --task track`."""
from engine.eval.mot.files import MotFileError, MotTable, MotWriter, mot_lines, read_mot
from engine.eval.mot.metrics import MotMetrics, evaluate

__all__ = ["MotFileError", "MotMetrics", "MotTable", "MotWriter", "evaluate", "mot_lines", "read_mot"]
