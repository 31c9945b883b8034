"""Training transforms that take an explicit ``torch.Generator``, so every augmented image is reproducible.

CoOp's recipe: random-resized-crop (scale from the dataset's :class:`Augmentation`, ratio 3/4..4/3),
horizontal flip with probability 0.5 when the dataset allows it, then the model's normalisation.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from nemesis_analysis.data.base import Augmentation

_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def crop_params(
    height: int, width: int, scale: tuple[float, float], generator: torch.Generator, ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area (torchvision's algorithm)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    # Fallback: the central crop with the closest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment_image(
    image: Image.Image, preprocess_cfg: dict, augmentation: Augmentation, generator: torch.Generator
) -> torch.Tensor:
    """One augmented, normalised training image (3, size, size)."""
    size = preprocess_cfg["size"]
    size = list(size) if isinstance(size, (tuple, list)) else [size, size]
    interpolation = _INTERPOLATION.get(preprocess_cfg.get("interpolation", "bicubic"), InterpolationMode.BICUBIC)
    top, left, h, w = crop_params(image.height, image.width, augmentation.crop_scale, generator)
    image = TF.resized_crop(image, top, left, h, w, size, interpolation=interpolation)
    if augmentation.flip and float(torch.rand(1, generator=generator)) < 0.5:
        image = TF.hflip(image)
    tensor = TF.to_tensor(image)
    return TF.normalize(tensor, preprocess_cfg["mean"], preprocess_cfg["std"])
