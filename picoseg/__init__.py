"""picoseg: supervised pixel contrastive learning (PiCo) for semantic segmentation.

Importing the package makes the third-party libraries it uses behave offline by default:
albumentations does not look for updates, the Hugging Face hub is not contacted, and W&B logs
to local files unless the user chose a mode. Each default only applies when the variable is unset.

It also registers the OmegaConf resolver ``picoseg.multirun``, which names a Hydra multirun job
for loggers (``conf/logger/wandb.yaml``): ``${picoseg.multirun:sweep_name}`` is the name of the
sweep directory (``hydra.sweep.dir``) and ``${picoseg.multirun:job_num}`` the job number as a
string, both ``null`` outside a multirun (single runs, composed configs without Hydra).
"""

import os
from pathlib import Path

from omegaconf import OmegaConf

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

__version__ = "0.1.0"


def _multirun(part: str) -> str | None:
    """The ``picoseg.multirun`` resolver: ``sweep_name`` or ``job_num`` of a multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if part not in ("sweep_name", "job_num"):
        raise ValueError(f"${{picoseg.multirun:{part}}}: expected sweep_name or job_num")
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    if part == "sweep_name":
        return Path(str(hydra_cfg.sweep.dir)).name
    return str(hydra_cfg.job.num)


if not OmegaConf.has_resolver("picoseg.multirun"):
    OmegaConf.register_new_resolver("picoseg.multirun", _multirun)
