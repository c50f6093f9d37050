"""Two CPU processes (gloo): after one gather-and-push, both ranks hold the same memory with both
ranks' pixels.

The test file is also the worker script: it launches itself twice with ``subprocess`` (a child
process cannot import test modules under pytest's importlib mode), with a free port and a hard
timeout so that a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import torch

WORLD = 2
BATCH, HEIGHT, WIDTH, CLASSES = 2, 3, 4, 3
PIXELS = BATCH * HEIGHT * WIDTH  # per rank
DIM = WORLD * PIXELS  # one-hot of the global pixel position: decodable after the push


def _rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's projections: pixel i of rank r is the one-hot e_{r * PIXELS + i} (scaled)."""
    gen = torch.Generator().manual_seed(100 + rank)
    eye = torch.zeros(PIXELS, DIM)
    eye[torch.arange(PIXELS), rank * PIXELS + torch.arange(PIXELS)] = 1 + torch.rand(PIXELS)
    projections = eye.view(BATCH, HEIGHT, WIDTH, DIM).permute(0, 3, 1, 2).contiguous()
    labels = torch.randint(0, CLASSES, (BATCH, HEIGHT, WIDTH), generator=gen)
    return projections, labels


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from picoseg.contrast import MemoryBank, gather_and_push

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    torch.manual_seed(rank)  # different random pixel picks on each rank

    def all_gather(tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(WORLD)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    memory = MemoryBank(CLASSES, DIM, pixel_size=40, region_size=6, pixels_per_image=2)
    projections, labels = _rank_data(rank)
    gather_and_push(memory, memory.select(projections, labels), all_gather)
    torch.save(memory.state_dict(), out)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_hold_identical_memory(tmp_path):
    port = _free_port()
    outs = [tmp_path / f"rank{rank}.pt" for rank in range(WORLD)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(port), str(outs[rank])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(WORLD)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=120)[0].decode())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs), "\n".join(logs)

    states = [torch.load(out) for out in outs]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name

    from picoseg.contrast import MemoryBank

    memory = MemoryBank(CLASSES, DIM, pixel_size=40, region_size=6, pixels_per_image=2)
    memory.load_state_dict(states[0])
    keys, key_labels = memory.pixel_keys()
    positions = keys.argmax(1)
    source_rank = positions // PIXELS
    assert set(source_rank.tolist()) == {0, 1}  # both ranks' pixels are in memory
    all_labels = torch.cat([_rank_data(rank)[1].reshape(-1) for rank in range(WORLD)])
    assert torch.equal(all_labels[positions], key_labels)  # each pixel under its own class
    expected = sum(
        min(2, int((_rank_data(rank)[1][b] == c).sum()))
        for rank in range(WORLD)
        for b in range(BATCH)
        for c in range(CLASSES)
    )
    assert keys.shape[0] == expected
    region_count = sum(
        int((_rank_data(rank)[1][b] == c).any())
        for rank in range(WORLD)
        for b in range(BATCH)
        for c in range(CLASSES)
    )
    assert int(memory.region_count.sum()) == region_count


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
