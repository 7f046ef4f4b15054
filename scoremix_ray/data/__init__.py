"""Data layer: readers for the supported formats, the limited-data split, image helpers."""

from scoremix_ray.data.readers import LabelledImages, load_labelled
from scoremix_ray.data.split import Split, make_split

__all__ = ["LabelledImages", "Split", "load_labelled", "make_split"]
