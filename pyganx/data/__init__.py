"""Data for GAN training: robust image loading, the papers' transforms, datasets over
folders, the bundled offline demo sets (``pyganx.data.demo``), and ``build_dataset``,
which builds a run's datasets for its plugin's kind of data."""
from .build import DataInfo, DataSource, RunData, build_dataset
from .folders import Images, LabelledImages, PairedImages, UnpairedImages, load_item
from .images import IMAGE_EXTENSIONS, ImageError, list_images, load_image, save_image, to_pil, to_tensor
from .transforms import EvalTransform, TrainTransform, load_size_for

__all__ = ["DataInfo", "DataSource", "EvalTransform", "IMAGE_EXTENSIONS", "ImageError", "Images", "LabelledImages",
           "PairedImages", "RunData", "TrainTransform", "UnpairedImages", "build_dataset", "list_images",
           "load_image", "load_item", "load_size_for", "save_image", "to_pil", "to_tensor"]
