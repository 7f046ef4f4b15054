"""Labelled images: readers, the split, and the decoded image stores the stages read."""

from scoremix_ray.core.data.readers import LabelledImages, load_labelled, scan
from scoremix_ray.core.data.split import Split, make_split, write_split
from scoremix_ray.core.data.store import ImageStore

__all__ = ["ImageStore", "LabelledImages", "Split", "load_labelled", "make_split", "scan", "write_split"]
