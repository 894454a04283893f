"""Data for GAN training: robust image loading, the papers' transforms, datasets over
folders, and the bundled offline demo sets (``pyganx.data.demo``)."""
from .folders import Images, LabelledImages, PairedImages, UnpairedImages
from .images import IMAGE_EXTENSIONS, ImageError, list_images, load_image, to_pil, to_tensor
from .transforms import EvalTransform, TrainTransform, load_size_for

__all__ = ["IMAGE_EXTENSIONS", "ImageError", "Images", "LabelledImages", "PairedImages", "EvalTransform",
           "TrainTransform", "UnpairedImages", "list_images", "load_image", "load_size_for",
           "to_pil", "to_tensor"]
