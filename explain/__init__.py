"""cifar-insight explain package: Grad-CAM maps, overlays and W&B reports of a classifier's mistakes."""

from explain.cam import CAM_METHODS, compute_cams

__all__ = ["CAM_METHODS", "compute_cams"]
