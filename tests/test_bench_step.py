"""The step benchmark's memory filling: every queue at capacity with distinct unit keys, as in
the steady state of a run (what its timed steps must see)."""

from __future__ import annotations

import pytest
import torch

from picoseg.contrast import MemoryBank


@pytest.fixture
def bench_step(load_script):
    return load_script("bench_step")


@pytest.mark.parametrize(("use_pixel", "use_region"), [(True, True), (True, False), (False, True)])
def test_fill_memory_fills_every_queue_with_distinct_unit_keys(bench_step, use_pixel, use_region):
    memory = MemoryBank(
        num_classes=3,
        dim=8,
        pixel_size=5,
        region_size=4,
        pixels_per_image=2,
        use_pixel=use_pixel,
        use_region=use_region,
    )
    bench_step.fill_memory(memory, seed=0)

    assert memory.pixel_count.tolist() == [5 * use_pixel] * 3
    assert memory.region_count.tolist() == [4 * use_region] * 3
    assert torch.equal(memory.fill_fraction(), torch.ones(3))
    keys = memory.keys.reshape(-1, 8)  # every slot of every class: none left at zero
    assert keys.shape[0] == 3 * (5 * use_pixel + 4 * use_region)
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(keys.shape[0]))
    # Distinct keys: no two slots hold the same vector.
    gram = keys @ keys.T - torch.eye(keys.shape[0])
    assert float(gram.max()) < 1 - 1e-4


def test_fill_memory_is_reproducible_from_its_seed(bench_step):
    def filled(seed: int) -> torch.Tensor:
        memory = MemoryBank(num_classes=2, dim=4, pixel_size=3, region_size=2)
        bench_step.fill_memory(memory, seed=seed)
        return memory.keys.clone()

    assert torch.equal(filled(0), filled(0))
    assert not torch.equal(filled(0), filled(1))
