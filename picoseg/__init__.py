"""picoseg: supervised pixel contrastive learning (PiCo) for semantic segmentation.

Importing the package makes the third-party libraries it uses behave offline by default:
albumentations does not look for updates, the Hugging Face hub is not contacted, and W&B logs
to local files unless the user chose a mode. Each default only applies when the variable is unset.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

__version__ = "0.1.0"
