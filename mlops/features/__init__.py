"""Feature encoding: raw feature rows -> the arrays the model takes, the one way training and serving share.

Below both training and serving (neither imports the other for it), and light: numpy and pandas only, no torch.
"""

from mlops.features._encode import categorical_strings, numeric_array
from mlops.features._images import IMAGE_SUFFIXES, ImageError, decode, decode_all, read_images
from mlops.features._finite import FLOAT32_MAX, BadValues, bad_values, repair, unusable

__all__ = sorted(["FLOAT32_MAX", "IMAGE_SUFFIXES", "BadValues", "ImageError", "bad_values", "categorical_strings",
                  "decode", "decode_all", "numeric_array", "read_images", "repair", "unusable"])
