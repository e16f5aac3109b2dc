"""Features of one view from the image and the gland and nodule masks (numpy/scipy only, no torch)."""

from llnm.features.cpdt import CapsuleDistance, cpdt
from llnm.features.extract import NoduleFeatures, clinical_vector, crop_resize, extract_features, lobe_position

__all__ = ["CapsuleDistance", "NoduleFeatures", "clinical_vector", "cpdt", "crop_resize",
           "extract_features", "lobe_position"]
