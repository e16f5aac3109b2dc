"""Nodule (YOLOv8-seg) and gland (U-Net++) segmentation: numpy pre/post-processing around the
models of `model_repository/` (nodule_seg, thyroid_seg), run through any InferenceBackend.

Importing this package never imports torch; training lives in `train_gland` / `train_nodule`.
"""

from llnm.segmentation.gland import segment_gland
from llnm.segmentation.nodule import NoduleDetection, segment_nodule

__all__ = ["NoduleDetection", "segment_gland", "segment_nodule"]
