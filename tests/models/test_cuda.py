"""MambaRec on a CUDA device gives what it gives on the CPU."""
from __future__ import annotations

import pytest
import torch

from support import default_dtype, random_batch

from mambarec_pyg.config import MambaRecConfig
from mambarec_pyg.data.graphs import item_item_graph, normalized_adjacency
from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models.mambarec import MambaRec

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason='needs a CUDA device')]

UI = ('user', 'interacts', 'item')


@pytest.mark.parametrize('variant', ['reference', 'paper'])
@pytest.mark.parametrize('propagation', ['fused', 'pyg'])
def test_cuda_matches_cpu(tiny_data, variant, propagation):
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        cpu = MambaRec(tiny_data, MambaRecConfig(variant=variant, dropout=0.0,
                                                 propagation=propagation)).train()
        gpu = MambaRec(tiny_data, MambaRecConfig(variant=variant, dropout=0.0,
                                                 propagation=propagation))
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().train()
    batch = random_batch(tiny_data, 64)
    parts_cpu = cpu.loss(BPRBatch(*batch))
    parts_gpu = gpu.loss(BPRBatch(*(t.cuda() for t in batch)))
    assert parts_cpu.keys() == parts_gpu.keys()
    for key in parts_cpu:
        torch.testing.assert_close(parts_gpu[key].cpu(), parts_cpu[key], rtol=1e-9,
                                   atol=1e-12)
    parts_cpu['total'].backward()
    parts_gpu['total'].backward()
    grads_gpu = dict(gpu.named_parameters())
    for name, p in cpu.named_parameters():
        torch.testing.assert_close(grads_gpu[name].grad.cpu(), p.grad, rtol=1e-7,
                                   atol=1e-12, msg=name)
    users = torch.arange(10)
    torch.testing.assert_close(gpu.recommend(users.cuda(), 5).cpu(),
                               cpu.recommend(users, 5))


def test_graphs_on_cuda(tiny_data):
    edge_index = tiny_data[UI].edge_index
    U, N = tiny_data['user'].num_nodes, tiny_data['item'].num_nodes
    cpu = normalized_adjacency(edge_index, U, N, dtype=torch.float64, layout='csr')
    gpu = normalized_adjacency(edge_index.cuda(), U, N, dtype=torch.float64,
                               layout='csr')
    torch.testing.assert_close(gpu.adj.to_dense().cpu(), cpu.adj.to_dense())
    x = tiny_data['item']['text'].double()
    a = item_item_graph(x, 10)
    b = item_item_graph(x.cuda(), 10)
    torch.testing.assert_close(b.to_dense().cpu(), a.to_dense())
