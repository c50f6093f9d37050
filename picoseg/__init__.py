"""picoseg: supervised pixel contrastive learning (PiCo) for semantic segmentation.

Importing the package quiets two third-party defaults: albumentations does not look for updates,
and W&B logs to local files unless the user chose a mode (each only when the variable is unset).
The Hugging Face hub is left as the user has it, so ``backbone.pretrained=true`` downloads timm's
weights where the network allows it (the tests and CI set ``HF_HUB_OFFLINE=1``).

It also registers the OmegaConf resolver ``picoseg.multirun``, which names a Hydra multirun job
for loggers (``conf/logger/wandb.yaml``): ``${picoseg.multirun:sweep_name}`` is the name of the
sweep directory (``hydra.sweep.dir``) and ``${picoseg.multirun:job_num}`` the job number as a
string, both ``null`` outside a multirun (single runs, composed configs without Hydra).

And ``picoseg.slurm_task``, which keeps the tasks of one multi-task SLURM job
(``trainer=slurm``: every task runs the whole script in the same run directory) from writing over
each other: ``${picoseg.slurm_task:output_subdir}`` is ``.hydra`` for task 0 and ``null`` (no
``.hydra/`` output) for the others, ``${picoseg.slurm_task:log_suffix}`` is empty for task 0 and
``_task<N>`` for task N, so each task logs to its own file (``conf/hydra/default.yaml``).

And ``picoseg.input_norm``: ``${picoseg.input_norm:<timm model>,mean}`` (or ``std``) is the input
normalisation the model's pretrained weights expect
(:func:`picoseg.models.pretrained.input_normalization`), which ``conf/train.yaml`` gives the
datamodule.
"""

import os
from pathlib import Path

from omegaconf import OmegaConf

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
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


def _slurm_task(part: str) -> str | None:
    """The ``picoseg.slurm_task`` resolver: ``output_subdir`` or ``log_suffix`` of this task."""
    if part not in ("output_subdir", "log_suffix"):
        raise ValueError(f"${{picoseg.slurm_task:{part}}}: expected output_subdir or log_suffix")
    tasks, task = os.environ.get("SLURM_NTASKS", "1"), os.environ.get("SLURM_PROCID", "0")
    try:
        other_task = int(tasks) > 1 and int(task) > 0
    except ValueError as error:
        raise ValueError(
            f"SLURM_NTASKS={tasks!r}, SLURM_PROCID={task!r}: expected integers"
        ) from error
    if part == "output_subdir":
        return None if other_task else ".hydra"
    return f"_task{task}" if other_task else ""


def _input_norm(model_name: str, which: str) -> list[float]:
    """The ``picoseg.input_norm`` resolver: ``mean`` or ``std`` for timm model ``model_name``."""
    if which not in ("mean", "std"):
        raise ValueError(f"${{picoseg.input_norm:{model_name},{which}}}: expected mean or std")
    from picoseg.models.pretrained import input_normalization

    mean, std = input_normalization(str(model_name))
    return list(mean if which == "mean" else std)


if not OmegaConf.has_resolver("picoseg.multirun"):
    OmegaConf.register_new_resolver("picoseg.multirun", _multirun)
if not OmegaConf.has_resolver("picoseg.slurm_task"):
    OmegaConf.register_new_resolver("picoseg.slurm_task", _slurm_task)
if not OmegaConf.has_resolver("picoseg.input_norm"):
    OmegaConf.register_new_resolver("picoseg.input_norm", _input_norm)
