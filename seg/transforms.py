"""Joint image+mask augmentation with ``torchvision.transforms.v2``.

The image is a ``tv_tensors.Image`` and the mask a ``tv_tensors.Mask``, so v2 applies
the *same* random crop and flip to both and resizes the mask with nearest neighbour.
A crop is specified as a fraction of the image area (the augmentation experiments compare 1/4 and
1/16); it keeps the image's aspect ratio and is resized back to the training size so
batches stack.

torchvision is imported when an augmentation is first built, not with this module: importing it
pulls in ``torch._dynamo`` (seconds), which serving never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from torchvision.transforms import v2

CropFraction = float | tuple[float, float] | None
#: mask value of pixels that augmentation invents (zoom-out border, rotated corners): no label
IGNORE = 255
#: canvas colour for those pixels: about the mean colour of natural images
_FILL = (124, 116, 104)


def _scale_range(crop_fraction: CropFraction) -> tuple[float, float] | None:
    if crop_fraction is None:
        return None
    lo, hi = (crop_fraction, crop_fraction) if isinstance(crop_fraction, (int, float)) else crop_fraction
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"crop fraction must be in (0, 1], got {crop_fraction}")
    return float(lo), float(hi)


class JointAugment:
    """Random crop (area fraction) + horizontal flip (probability p), on image and mask alike.

    ``crop_fraction`` is a fraction of the area, or a (min, max) range for scale
    jitter, or None for no crop. ``size`` is (H, W) of the output; default: input size.
    ``color_jitter`` > 0 adds brightness/contrast/saturation jitter to the image only.
    ``zoom_out`` > 1 places the image, half the time, on a canvas up to that many times its side
    (objects appear smaller than in the dataset's framing); ``rotate`` turns it by up to that many
    degrees. Pixels these add to the mask are ``IGNORE`` so the loss skips them.
    """

    def __init__(
        self,
        crop_fraction: CropFraction = 0.25,
        flip_p: float = 0.5,
        size: tuple[int, int] | None = None,
        color_jitter: float = 0.0,
        zoom_out: float = 1.0,
        rotate: float = 0.0,
    ) -> None:
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {flip_p}")
        if not 1.0 <= zoom_out <= 4.0:
            raise ValueError(f"zoom-out ratio must be in [1, 4], got {zoom_out}")
        if not 0.0 <= rotate <= 45.0:
            raise ValueError(f"rotation must be in [0, 45] degrees, got {rotate}")
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        self.crop_fraction = crop_fraction
        self.flip_p = flip_p
        self.size = size
        self.color_jitter = color_jitter
        self._scale = _scale_range(crop_fraction)
        self._flip = v2.RandomHorizontalFlip(p=flip_p)
        self._jitter = (
            v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
            if color_jitter > 0
            else None
        )
        fill = {tv_tensors.Image: _FILL, tv_tensors.Mask: IGNORE}
        self._geometry: list[v2.Transform] = []
        if zoom_out > 1.0:
            self._geometry.append(v2.RandomZoomOut(fill=fill, side_range=(1.0, zoom_out), p=0.5))
        if rotate > 0:
            self._geometry.append(v2.RandomRotation(rotate, interpolation=v2.InterpolationMode.BILINEAR, fill=fill))

    def _crop(self, size: tuple[int, int]) -> v2.Transform:
        from torchvision.transforms import v2

        h, w = size
        aspect = w / h  # keep the aspect ratio: the crop is a scaled-down window of the image
        return v2.RandomResizedCrop(
            size=self.size or size,
            scale=self._scale,
            ratio=(aspect, aspect),
            interpolation=v2.InterpolationMode.BILINEAR,
            antialias=True,
        )

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (3,H,W) uint8, ``mask`` (H,W) integer -> same dtypes, same size or ``self.size``."""
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        img = tv_tensors.Image(image)
        msk = tv_tensors.Mask(mask)
        ops: list[v2.Transform] = list(self._geometry)
        if self._scale is not None:
            ops.append(self._crop(tuple(image.shape[-2:])))
        elif self._geometry or (self.size is not None and tuple(self.size) != tuple(image.shape[-2:])):
            ops.append(v2.Resize(self.size or tuple(image.shape[-2:]), antialias=True))  # a zoomed-out canvas too
        ops.append(self._flip)
        img, msk = v2.Compose(ops)(img, msk)
        if self._jitter is not None:
            img = self._jitter(img)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)


def augment_samples(
    image: np.ndarray,
    mask: np.ndarray,
    crop_fraction: CropFraction,
    flip_p: float,
    n: int,
    seed: int,
    size: tuple[int, int] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """N augmented (image HxWx3 uint8, mask HxW uint8) pairs of one pair, reproducible by ``seed``.

    Used by the dashboard's Augment tab and by the tests that check image and mask move together.
    """
    if n < 1 or n > 64:
        raise ValueError(f"number of samples must be 1..64, got {n}")
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
        raise ValueError(
            f"need an (H,W,3) image and an (H,W) mask of the same size, got {image.shape} and {mask.shape}"
        )
    augment = JointAugment(crop_fraction, flip_p, size=size)
    img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    mask_t = torch.from_numpy(np.ascontiguousarray(mask))
    out = []
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        for _ in range(n):
            a_img, a_mask = augment(img_t, mask_t)
            out.append((a_img.permute(1, 2, 0).numpy().copy(), a_mask.numpy().astype(np.uint8)))
    finally:
        torch.random.set_rng_state(state)
    return out


def class_mix(
    images: torch.Tensor, masks: torch.Tensor, share: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """ClassMix (Olsson et al., WACV 2021): a ``share`` of a batch's crops get the pixels of a random half of
    the classes in the next crop of the batch, labels with them.

    Scenes become new combinations of the dataset's own regions, with exact labels, so a class is seen
    against backgrounds it never had (a lake below a building, a car on grass). ``IGNORE`` pixels are
    never pasted. Returns new tensors; the inputs are left as they are.
    """
    n = len(images)
    if n < 2 or share <= 0:
        return images, masks
    mixed_images, mixed_masks = images.clone(), masks.clone()
    chosen = torch.rand(n, generator=generator) < share
    for i in torch.nonzero(chosen).flatten().tolist():
        j = (i + 1) % n
        classes = masks[j].unique()
        classes = classes[classes != IGNORE]
        if len(classes) == 0:
            continue
        picked = classes[torch.rand(len(classes), generator=generator) < 0.5]
        if len(picked) == 0:
            picked = classes[torch.randint(len(classes), (1,), generator=generator)]
        region = torch.isin(masks[j], picked)
        mixed_images[i][:, region] = images[j][:, region]
        mixed_masks[i][region] = masks[j][region]
    return mixed_images, mixed_masks
