"""Train-time augmentation on decoded uint8 pixels: lab-style (flips, rotation, zoom, colour,
blur, noise) and field-style (the leaf cut off its board and pasted on a generic ground)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np

from .config import AugmentConfig


def build_augment(cfg: AugmentConfig) -> Callable[..., np.ndarray]:
    """The train-time pipeline on uint8 pixels already at the model's size.

    Returns `apply(pixels, seed=None)`; a seed makes the result reproducible.
    """
    import albumentations as A
    import cv2

    steps: list[Any] = [
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.Rotate(limit=cfg.rotate_limit, p=cfg.rotate_p, border_mode=cv2.BORDER_REFLECT_101),
    ]
    if cfg.zoom_p > 0:
        steps.append(
            A.Affine(
                scale=(cfg.zoom_min, cfg.zoom_max),
                translate_percent=(-cfg.shift, cfg.shift),
                border_mode=cv2.BORDER_REFLECT_101,
                p=cfg.zoom_p,
            )
        )
    steps.append(
        A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_contrast,
            contrast_limit=cfg.brightness_contrast,
            p=cfg.brightness_contrast_p,
        )
    )
    if cfg.color_p > 0:
        steps.append(
            A.OneOf(
                [
                    A.HueSaturationValue(
                        hue_shift_limit=8, sat_shift_limit=25, val_shift_limit=10, p=1.0
                    ),
                    A.PlanckianJitter(mode="blackbody", p=1.0),
                ],
                p=cfg.color_p,
            )
        )
    if cfg.illumination_p > 0:
        steps.append(
            A.Illumination(
                mode="linear",
                intensity_range=(0.05, 0.2),
                effect_type="both",
                p=cfg.illumination_p,
            )
        )
    steps += [
        A.GaussianBlur(blur_limit=(3, 5), p=cfg.blur_p),
        A.GaussNoise(std_range=(0.02, 0.06), p=cfg.noise_p),
    ]
    pipeline = A.Compose(steps)
    grounds = GroundBank()

    def apply(pixels: np.ndarray, seed: int | None = None) -> np.ndarray:
        # Compose draws from its own generators; a per-sample seed makes runs reproducible.
        if seed is not None:
            pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
        if cfg.field_p > 0:
            rng = np.random.default_rng(None if seed is None else [seed, 1])
            if rng.random() < cfg.field_p:
                ground = grounds.draw(rng, pixels.shape[0])
                pixels = paste_on_ground(pixels, ground, rng, leaf_scale_min=cfg.leaf_scale_min)
        return np.asarray(pipeline(image=pixels)["image"])

    return apply


def random_ground(rng: np.random.Generator, size: int) -> np.ndarray:
    """A generic textured ground for training: two random colours mixed by fractal noise, with
    random blobs, at a random blur. Deliberately not the proxy's soil/grass/litter/canopy
    drawings (training.field_proxy), so the proxy does not measure recognition of its own textures.
    """
    import cv2

    from .compositing import fractal_noise

    hsv = np.stack(
        [
            rng.uniform(0, 180, 2),  # OpenCV hue: any colour, weighted to greens and browns below
            rng.uniform(20, 200, 2),
            rng.uniform(30, 200, 2),
        ],
        axis=1,
    )
    if rng.random() < 0.7:
        hsv[:, 0] = rng.uniform(8, 75, 2)  # browns, yellows, greens
    colors = cv2.cvtColor(hsv[None].astype(np.uint8), cv2.COLOR_HSV2RGB)[0].astype(np.float32)
    mix = fractal_noise(rng, size, octaves=4, base=int(rng.integers(2, 6)))[..., None]
    img = colors[0] * mix + colors[1] * (1 - mix)
    for _ in range(int(rng.integers(0, 25))):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (int(rng.integers(1, size // 6)), int(rng.integers(1, size // 10)))
        color = colors[int(rng.integers(2))] * rng.uniform(0.5, 1.5)
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, color.tolist(), -1)
    sigma = float(rng.choice([0.0, rng.uniform(0.5, 4.0)]))
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return np.clip(img, 0, 255).astype(np.float32)


class GroundBank:
    """A fixed set of `random_ground` textures, drawn once per process and size (drawing one
    costs several ms; picking one with a random flip, rotation and tint costs ~0.1 ms).
    """

    def __init__(self, n: int = 64, seed: int = 20240) -> None:
        self.n = n
        self.seed = seed
        self.bank: dict[int, list[np.ndarray]] = {}

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if size not in self.bank:
            make = np.random.default_rng([self.seed, size])
            self.bank[size] = [random_ground(make, size) for _ in range(self.n)]
        ground = self.bank[size][int(rng.integers(self.n))]
        ground = np.rot90(ground, int(rng.integers(4)))
        if rng.random() < 0.5:
            ground = ground[::-1]
        tint = rng.uniform(0.75, 1.25, 3).astype(np.float32)
        return np.ascontiguousarray(ground * tint)


def paste_on_ground(
    pixels: np.ndarray,
    ground: np.ndarray,
    rng: np.random.Generator,
    *,
    leaf_scale_min: float = 0.55,
) -> np.ndarray:
    """Cut-paste augmentation: the leaf, segmented off its board, on `ground` (float32, same
    size), shrunk and shifted, with a soft cast shadow. A photo whose leaf cannot be segmented
    passes through unchanged.
    """
    import cv2

    from .compositing import cut_leaf, leaf_mask, paste

    mask = leaf_mask(pixels)
    frac = float(mask.mean()) / 255
    if not 0.03 < frac < 0.9:
        return pixels
    size = pixels.shape[0]
    leaf = cut_leaf(pixels, mask)
    frame = ground.astype(np.float32, copy=True)
    extent = rng.uniform(leaf_scale_min, 1.0)
    scale = extent * size / max(leaf.size) * 0.95
    room = (1 - extent) / 2 + 0.05
    center = (size * (0.5 + rng.uniform(-room, room)), size * (0.5 + rng.uniform(-room, room)))
    alpha = paste(frame, leaf, center=center, scale=scale, angle=0.0)
    if rng.random() < 0.5:
        dx, dy = rng.uniform(-0.05, 0.05, 2) * size
        shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        shadow = cv2.warpAffine(alpha, shift, (size, size))
        shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(1, 5))
        frame *= (1 - rng.uniform(0.2, 0.6) * shadow * (1 - alpha))[..., None]
    return np.clip(frame, 0, 255).astype(np.uint8)
