"""Segment a folder of images: ``python -m picoseg.predict ckpt_path=PATH input=DIR output=DIR``.

The network is rebuilt from the run configuration stored in the checkpoint (as in
``picoseg.evaluate``). Every ``.png``/``.jpg``/``.jpeg`` image of ``input`` (sorted) is
normalised with the dataset's mean and std, predicted with the ``inference`` node (whole image or
sliding window, scales, flips) and written as ``output/NAME.png`` (class ids, single-channel
uint8) and ``output/NAME_color.png`` (the dataset's palette).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from picoseg.checkpoint import load_run
from picoseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from picoseg.inference import inference_settings, pick_device, predict_labels
from picoseg.visualize import colorize, default_palette

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(input_dir: str | Path) -> list[Path]:
    """The images (png/jpg/jpeg, any case) directly in ``input_dir``, sorted by name.

    Raises:
        FileNotFoundError: ``input_dir`` is not a directory, or holds no image.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input directory not found: {input_dir}")
    paths = sorted(
        p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise FileNotFoundError(f"{input_dir}: no image (expected files ending {IMAGE_SUFFIXES})")
    return paths


def load_image(path: Path, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Read an image as RGB and normalise it: (3, H, W) float32.

    Raises:
        ValueError: the file is not a readable image.
    """
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error
    normalized = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(normalized.transpose(2, 0, 1).copy())


def predict(cfg: DictConfig) -> list[Path]:
    """Rebuild the network of ``cfg.ckpt_path`` and segment every image of ``cfg.input``.

    Returns:
        The id masks written, one per input image.
    """
    run_cfg, model = load_run(cfg.ckpt_path)
    paths = list_images(cfg.input)
    output_dir = Path(cfg.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule_cfg = run_cfg.dataset.datamodule
    mean = list(datamodule_cfg.get("mean") or IMAGENET_MEAN)
    std = list(datamodule_cfg.get("std") or IMAGENET_STD)
    palette = run_cfg.dataset.get("palette") or default_palette(model.num_classes)
    kwargs: dict[str, Any] = inference_settings(cfg.get("inference"), run_cfg.train_crop_size) or {}
    device = pick_device(cfg)
    network = model.network.to(device).eval()
    written = []
    for path in tqdm(paths, desc="predict", unit="image"):
        image = load_image(path, mean, std)[None].to(device)
        ids = predict_labels(network, image, **kwargs)[0].cpu().numpy().astype(np.uint8)
        mask_path = output_dir / f"{path.stem}.png"
        Image.fromarray(ids, mode="L").save(mask_path)
        Image.fromarray(colorize(ids, palette)).save(output_dir / f"{path.stem}_color.png")
        written.append(mask_path)
    log.info("%d masks written to %s", len(written), output_dir)
    return written


@hydra.main(version_base="1.3", config_path="pkg://picoseg.conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
