"""Data-parallel training across processes, as users train past one machine: DDP and FSDP2
(`fully_shard`) over the gloo backend, two processes on this machine. fusedgru.GRU must give the
gradients and the updated weights nn.GRU gives under the same wrapper, data and optimizer."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fusedgru

WORLD = 2


def _train(rank, init_file, wrapper, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank
        ref = nn.GRU(6, 9, num_layers=2, bidirectional=True, batch_first=True).double()
        ours = fusedgru.GRU(6, 9, num_layers=2, bidirectional=True, batch_first=True).double()
        ours.load_state_dict(ref.state_dict())
        torch.manual_seed(100 + rank)  # each rank its own shard of the batch
        x = torch.randn(3, 5, 6, dtype=torch.float64)
        target = torch.randn(3, 5, 18, dtype=torch.float64)
        out = {}
        for name, module in (("nn.GRU", ref), ("fusedgru", ours)):
            if wrapper == "ddp":
                model = nn.parallel.DistributedDataParallel(module)
            else:
                from torch.distributed.device_mesh import init_device_mesh
                from torch.distributed.fsdp import fully_shard
                model = fully_shard(module, mesh=init_device_mesh("cpu", (WORLD,)))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(2):
                opt.zero_grad()
                y, _ = model(x)
                ((y - target) ** 2).mean().backward()
                opt.step()

            def full(t):
                return t.full_tensor() if hasattr(t, "full_tensor") else t

            out[name] = ([full(p.grad).detach().clone() for p in model.parameters()],
                         [full(p).detach().clone() for p in model.parameters()])
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_data_parallel_training_matches_nn_gru(wrapper):
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(_train, args=(os.path.join(tmp, "init"), wrapper, results), nprocs=WORLD,
                 join=True)
        results = dict(results)
    for rank in range(WORLD):
        ref_grads, ref_weights = results[rank]["nn.GRU"]
        our_grads, our_weights = results[rank]["fusedgru"]
        assert len(ref_grads) == len(our_grads) == 16
        for i, (o, r) in enumerate(zip(our_grads + our_weights, ref_grads + ref_weights)):
            assert torch.allclose(o, r, rtol=1e-10, atol=1e-12), f"rank {rank}, tensor {i}"
    # Every rank ends with the same weights (the gradients were averaged across ranks).
    for o, r in zip(results[0]["fusedgru"][1], results[1]["fusedgru"][1]):
        assert torch.equal(o, r)
