"""``_distributed``: ranks from the torchrun environment, sharding, and gloo collectives."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adaptive_dllm._distributed import (
    Ranks,
    all_reduce_sum,
    barrier,
    gather_objects,
    init_ranks,
    rank_device,
    shard,
)
from adaptive_dllm.errors import AdllmError


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_without_torchrun_everything_is_one_rank(no_torchrun):
    ranks = init_ranks("cpu")
    assert ranks == Ranks(0, 1, 0) and ranks.is_main and not ranks.distributed
    assert not dist.is_initialized()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t, ranks) is t and t.tolist() == [1.0, 2.0]
    assert gather_objects({"a": 1}, ranks) == [{"a": 1}]
    barrier(ranks)


@pytest.mark.parametrize("rank, world, local", [(2, 2, 0), (-1, 2, 0), (0, 0, 0), (0, 2, -1)])
def test_invalid_ranks_are_refused(rank, world, local):
    with pytest.raises(AdllmError, match="invalid ranks"):
        Ranks(rank, world, local)


def test_non_integer_environment_is_a_one_line_error(no_torchrun, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(AdllmError, match="WORLD_SIZE='two'"):
        init_ranks("cpu")


@pytest.mark.parametrize("n, world", [(0, 3), (1, 2), (7, 3), (8, 4), (5, 8)])
def test_shard_is_a_balanced_partition_in_order(n, world):
    items = list(range(n))
    parts = [shard(items, Ranks(r, world)) for r in range(world)]
    assert sorted(x for p in parts for x in p) == items
    assert all(p == sorted(p) for p in parts)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_rank_device_maps_cuda_to_the_local_rank():
    assert rank_device(Ranks(3, 4, 1), "cuda") == torch.device("cuda", 1)
    assert rank_device(Ranks(3, 4, 1), "cuda:0") == torch.device("cuda", 0)  # explicit index kept
    assert rank_device(Ranks(0, 1, 0), "cuda") == torch.device("cuda")
    assert rank_device(Ranks(1, 2, 1), "cpu") == torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        ranks = init_ranks("cpu")
        assert init_ranks("cpu") == ranks  # idempotent
        total = all_reduce_sum(torch.tensor([float(rank + 1), 10.0 * rank]), ranks)
        objects = gather_objects({"rank": rank, "items": shard(list(range(5)), ranks)}, ranks)
        barrier(ranks)
        results.put((rank, dist.get_backend(), total.tolist(), objects))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_two_ranks(worker) -> dict[int, list]:
    """Spawn ``worker(rank, 2, port, queue)`` on two gloo ranks; rank -> what it put, after both
    exited with status 0."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = {r: rest for r, *rest in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


@pytest.mark.slow
def test_two_gloo_ranks_reduce_and_gather_in_rank_order(no_torchrun):
    got = _run_two_ranks(_worker)
    for rank in (0, 1):
        backend, total, objects = got[rank]
        assert backend == "gloo"
        assert total == [3.0, 10.0]
        assert objects == [{"rank": 0, "items": [0, 2, 4]}, {"rank": 1, "items": [1, 3]}]


def _leaving_worker(rank: int, world: int, port: int, results) -> None:
    import os

    from adaptive_dllm._distributed import leave_ranks

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_ranks("cpu")
    leave_ranks()
    results.put((rank, dist.is_initialized()))
    leave_ranks()  # a second call, or one without a job, does nothing


@pytest.mark.slow
def test_leave_ranks_destroys_the_group_on_every_rank(no_torchrun):
    """Found by CI: a torchrun rank that exited with its gloo group alive aborted now and then
    (exit -6) after finishing its work; the CLI now leaves the group before returning."""
    assert _run_two_ranks(_leaving_worker) == {0: [False], 1: [False]}


def test_main_leaves_no_process_group_behind(no_torchrun, monkeypatch, tmp_path):
    """``adllm`` returns with the group of a (one-rank) job destroyed."""
    from adaptive_dllm.cli import main

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    dist.init_process_group("gloo")
    try:
        assert main(["budget", "--shape", "2x2", "--blocks", "4", "--json"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
