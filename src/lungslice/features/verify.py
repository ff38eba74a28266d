"""Prove a backbone's weights are the real ImageNet ones by classifying two known photos.

scikit-image ships ``chelsea`` (a tabby cat: ImageNet classes 281-285, the
domestic cats) and ``coffee`` (a cup of espresso: class 967). Pretrained
weights put the expected class first; random or mismatched weights do not.
Class names come from timm's bundled ImageNet metadata (offline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lungslice.features.backbones import Backbone

__all__ = ["IMAGES", "ImageCheck", "VerifyResult", "verify_backbone"]

#: Photo name -> accepted ImageNet class indices.
IMAGES: dict[str, tuple[int, ...]] = {
    "chelsea": (281, 282, 283, 284, 285),
    "coffee": (967,),
}


@dataclass(frozen=True)
class ImageCheck:
    """The top-5 of one photo and whether the top-1 is an accepted class."""

    image: str
    expected: tuple[int, ...]
    top5: tuple[tuple[int, str, float], ...]

    @property
    def passed(self) -> bool:
        """True when the most probable class is one of ``expected``."""
        return self.top5[0][0] in self.expected


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_backbone`."""

    backbone: str
    weights_id: str
    checks: tuple[ImageCheck, ...]

    @property
    def passed(self) -> bool:
        """True when every photo is classified correctly."""
        return all(c.passed for c in self.checks)


def verify_backbone(backbone: Backbone) -> VerifyResult:
    """Classify the bundled photos with ``backbone``'s ImageNet classifier.

    Preprocessing is timm's evaluation transform for the model's own data
    config (resize, centre crop, mean/std), in FP32.
    """
    import skimage.data
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform

    transform = create_transform(**backbone.data_config, is_training=False)
    names = ImageNetInfo()
    checks = []
    for image, expected in IMAGES.items():
        photo = Image.fromarray(getattr(skimage.data, image)())
        x = transform(photo).unsqueeze(0)
        with torch.inference_mode():
            probs = backbone.classify(x).float().softmax(dim=-1)[0]
        top = probs.topk(5)
        top5 = tuple(
            (int(i), str(names.index_to_description(int(i))), float(p))
            for p, i in zip(top.values, top.indices, strict=True)
        )
        checks.append(ImageCheck(image, expected, top5))
    return VerifyResult(backbone.name, backbone.weights_id, tuple(checks))
