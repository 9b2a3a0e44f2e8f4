"""cifar-insight explain package: Grad-CAM maps, overlays and W&B reports of a classifier's mistakes."""

from explain.cam import CAM_METHODS, compute_cams
from explain.report import explain_model, find_mistakes

__all__ = ["CAM_METHODS", "compute_cams", "explain_model", "find_mistakes"]
