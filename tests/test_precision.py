"""Mixed precision (the contrast stays float32) and the guard that skips non-finite steps."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from picoseg.contrast import (
    MemoryBank,
    MemoryBankCallback,
    NegativeSynthesis,
    PixelContrastLoss,
    PixelSampler,
)
from picoseg.contrast.grid_labels import resize_labels
from picoseg.models import Segmentor
from picoseg.random_state import load_rng_state, rng_state
from picoseg.system import SegmentationSystem

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*`training_step` returned `None`:UserWarning",
)


@pytest.fixture
def network(tiny_network) -> Callable[[], Segmentor]:
    """``network()``: all four levels: features at stride 4, an 8 x 8 embedding grid for
    32 x 32 images."""
    return functools.partial(tiny_network, channels=16, in_index=[-4, -3, -2, -1])


@pytest.fixture
def pico_system(tiny_system, network) -> Callable[..., SegmentationSystem]:
    """``pico_system(net=None)``: a new PiCo system (AdamW, unnormalised 8-d projections,
    seeded sampler and synthesis, a memory) of ``net``, by default ``network()``."""

    def build(net: nn.Module | None = None) -> SegmentationSystem:
        return tiny_system(
            net if net is not None else network(),
            optimizer=torch.optim.AdamW,
            lr=1e-3,
            projection_dim=8,
            normalize=False,
            contrast=PixelContrastLoss(
                PixelSampler(
                    max_anchors=64, min_pixels=2, num_positives=16, num_negatives=32, seed=0
                ),
                NegativeSynthesis(num_neg_neg=4, num_neg_anchor=4, hard_pool=8, seed=1),
                num_classes=3,
            ),
            memory=MemoryBank(3, dim=8, pixel_size=1000, region_size=100, pixels_per_image=4),
            contrast_warmup_steps=0,
        )

    return build


def _loader(num: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    items = [
        {
            "image": torch.randn(3, 32, 32, generator=generator),
            "mask": torch.randint(0, 3, (32, 32), generator=generator),
        }
        for _ in range(num)
    ]
    return DataLoader(items, batch_size=2, shuffle=False)


def _trainer(callbacks: list[L.Callback], max_steps: int, precision: str = "32-true") -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        precision=precision,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_contrast_under_bf16_autocast_is_float32_and_equals_the_fp32_computation(pico_system):
    torch.manual_seed(0)
    system = pico_system().train()
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    cpu = torch.device("cpu")
    system.contrast.sampler.generator(cpu)  # create the private generators, to save them
    system.contrast.synthesis._generator(cpu)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = system.network(images)
        assert out.features.dtype == torch.bfloat16  # autocast is really on
        state = rng_state(system)
        contrast, projections, embedding_labels = system.contrast_term(out, labels)
    assert projections.dtype == torch.float32
    assert contrast.loss.dtype == torch.float32 and contrast.loss.isfinite()
    assert projections.shape[-2:] == (8, 8) and contrast.num_anchors > 0
    # The fp32 reference: the projection head on the float32-cast features, the loss with the
    # same random draws, both outside autocast.
    torch.testing.assert_close(projections, system.projection(out.features.float()), rtol=0, atol=0)
    load_rng_state(system, state)
    size = projections.shape[-2:]
    predictions = out.logits.detach()
    if predictions.shape[-2:] != size:
        predictions = F.interpolate(predictions, size=size, mode="bilinear")
    reference = system.contrast(
        projections, resize_labels(labels, size), predictions.argmax(1), system.memory
    )
    assert torch.equal(embedding_labels, resize_labels(labels, size))
    assert reference.loss.dtype == torch.float32
    assert torch.equal(contrast.loss, reference.loss)


class _NaNOnCall(nn.Module):
    """The network, with NaN logits on its ``nan_call``-th forward pass (0-based)."""

    def __init__(self, network: Segmentor, nan_call: int) -> None:
        super().__init__()
        self.inner = network
        self.nan_call = nan_call
        self.calls = 0

    @property
    def feature_channels(self) -> int:
        return self.inner.feature_channels

    def forward(self, images: torch.Tensor):
        out = self.inner(images)
        if self.calls == self.nan_call:
            out.logits = out.logits * float("nan")
        self.calls += 1
        return out


class _Recorder(L.Callback):
    """Per batch: did any parameter change, did the memory grow (read from one batch start to
    the next, since the module's own memory callback may run after this one)."""

    def __init__(self) -> None:
        self.changed: list[bool] = []
        self._counts: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._params = [p.detach().clone() for p in pl_module.parameters()]
        self._counts.append(pl_module.memory.pixel_count.clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = list(pl_module.parameters())
        self.changed.append(
            any(not torch.equal(a, b) for a, b in zip(self._params, params, strict=True))
        )

    def on_train_end(self, trainer, pl_module):
        self._counts.append(pl_module.memory.pixel_count.clone())

    @property
    def pushed(self) -> list[bool]:
        return [
            not torch.equal(a, b) for a, b in zip(self._counts[:-1], self._counts[1:], strict=True)
        ]


def test_a_step_with_a_nan_loss_is_skipped_counted_and_training_goes_on(
    caplog, network, pico_system
):
    torch.manual_seed(0)
    system = pico_system(_NaNOnCall(network(), nan_call=2))
    recorder = _Recorder()
    trainer = _trainer([recorder], max_steps=4)  # the module attaches its memory callback
    with caplog.at_level(logging.WARNING, logger="picoseg.system"):
        trainer.fit(system, train_dataloaders=_loader())
    assert recorder.changed == [True, True, False, True]
    assert recorder.pushed == [True, True, False, True]  # no NaN keys enter the memory
    assert system.skipped_steps == 1
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0
    assert trainer.global_step == 4  # the skipped batch still counts as a step
    optimizer = trainer.optimizers[0]
    steps = {int(optimizer.state[p]["step"]) for p in system.parameters()}
    assert steps == {3}  # AdamW's state never saw the skipped step
    assert all(p.isfinite().all() for p in system.parameters())
    assert "training step 2 " in caplog.text and "not finite" in caplog.text


def test_bf16_mixed_training_steps_on_cpu(pico_system):
    torch.manual_seed(0)
    system = pico_system()
    recorder = _Recorder()
    trainer = _trainer([recorder], max_steps=2, precision="bf16-mixed")
    trainer.fit(system, train_dataloaders=_loader(4))
    assert recorder.changed == [True, True] and recorder.pushed == [True, True]
    assert system.skipped_steps == 0
    for name in ("train/loss", "train/nce", "train/ce"):
        assert math.isfinite(float(trainer.callback_metrics[name]))
    assert system.memory.keys.dtype == torch.float32


def test_the_memory_fills_without_a_configured_callback_and_is_pushed_once_with_one(
    network, pico_system, tiny_system
):
    pushes = []
    for callbacks in ([], [MemoryBankCallback()]):
        torch.manual_seed(0)
        system = pico_system()
        recorder = _Recorder()
        trainer = _trainer([*callbacks, recorder], max_steps=2)
        trainer.fit(system, train_dataloaders=_loader(4))
        assert recorder.pushed == [True, True]
        assert sum(isinstance(c, MemoryBankCallback) for c in trainer.callbacks) == 1
        pushes.append(system.memory.pixel_count.clone())
    # a trainer that also lists the callback gets the module's in its place: no second push
    assert torch.equal(pushes[0], pushes[1])
    ce_only = tiny_system(network(), lr=None)  # torch.optim.SGD with its default lr
    assert MemoryBankCallback not in [type(c) for c in ce_only.configure_callbacks()]
