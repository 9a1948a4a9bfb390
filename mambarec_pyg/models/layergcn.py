r"""LayerGCN (`"Layer-refined Graph Convolutional Networks for Recommendation"
<https://arxiv.org/abs/2207.11088>`_, Zhou et al., ICDE 2023), as MMRec computes it
(``src/models/layergcn.py``, ``src/configs/model/LayerGCN.yaml``). No item features.

**Layer refinement.** From the Xavier-uniform ego embeddings
:math:`\mathbf{E}^{0} = [\mathbf{E}_u; \mathbf{E}_i]`, each layer propagates on the
normalised user-item graph and rescales every node's output by its cosine similarity
to the node's ego embedding:

.. math::
    \mathbf{H}^{l} = \tilde{\mathbf{A}}\mathbf{E}^{l-1}, \qquad
    \mathbf{E}^{l}_n = \cos(\mathbf{H}^{l}_n, \mathbf{E}^{0}_n)\,\mathbf{H}^{l}_n,
    \qquad \mathbf{E} = \sum_{l=1}^{L} \mathbf{E}^{l},

the sum over the layers :math:`1..L` (layer 0 excluded), :math:`L` = ``n_layers``,
and :math:`\hat y_{ui} = \mathbf{e}_u^\top\mathbf{e}_i`.

**Edge pruning in training** (:meth:`LayerGCN.on_epoch_start`). With ``dropout``
:math:`p > 0`, each epoch keeps :math:`\lfloor |E|(1-p) \rfloor` of the distinct
training pairs and re-normalises them
(:func:`~mambarec_pyg.nn.pruning.pruned_adjacency`, degrees + :math:`10^{-7}`): even
epochs (0, 2, ...) draw them with probability proportional to :math:`1/\sqrt{d_u d_i}`
(:func:`~mambarec_pyg.nn.pruning.degree_sensitive_sample`, as FREEDOM), odd epochs
uniformly (:func:`~mambarec_pyg.nn.pruning.uniform_sample`) -- MMRec's toggle
``pruning_random = True ^ pruning_random``, which starts degree-sensitive. Training-mode
forwards propagate on the pruned graph :math:`\tilde{\mathbf{A}}`; eval mode
(evaluation, serving) on the full :math:`\hat{\mathbf{A}}`
(:class:`~mambarec_pyg.data.transforms.UserItemNorm`). The draws use a
:class:`torch.Generator` seeded from the global torch RNG (a seeded run repeats; a
resumed run restores the global RNG).

**Loss** (sums over the batch, not means):

.. math::
    \mathcal{L} = \sum_{b} -\log\sigma(\hat y_{u_b i^+_b} - \hat y_{u_b i^-_b})
    + \lambda\,\frac{1}{2}\sum_b\big(\|\mathbf{E}^0_{u_b}\|^2 +
    \|\mathbf{E}^0_{i^+_b}\|^2 + \|\mathbf{E}^0_{i^-_b}\|^2\big),

MMRec's ``torch.sum(-logsigmoid)`` and ``L2Loss`` on the batch's ego embeddings,
:math:`\lambda` = ``reg_weight``.

Where this differs from MMRec (nothing that changes what is learned):

* The full graph's weights have no :math:`10^{-7}` on the degrees
  (:class:`~mambarec_pyg.data.transforms.UserItemNorm`; below float32 resolution);
  the sampling weights are those weights, the pruned graph adds the epsilon as MMRec.
* MMRec's uniform pruning uses Python's ``random.sample`` and its degree-sensitive
  pruning ``torch.multinomial`` on the global generator; here both draw from the
  epoch's generator (same distributions, other draws), and the alternation follows
  the epoch number, so a resumed run continues it.
* A training-mode forward before the first :meth:`~LayerGCN.on_epoch_start` uses the
  full graph (MMRec's trainer always prunes first).

**Defaults.** MMRec's yaml fixes ``n_layers`` 4 and gives grids for ``reg_weight``
[1e-2, 1e-3, 1e-4, 1e-5] and ``dropout`` [0.0, 0.1, 0.2]; the defaults here are the
middle values ``reg_weight`` 1e-3 and ``dropout`` 0.1 (:attr:`LayerGCNConfig.GRID`
searches both, 12 runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig, check_positive_int, check_range
from ..data.sampling import BPRBatch
from ..data.transforms import UserItemNorm
from ..nn.conv import LightGCNConv
from ..nn.pruning import DegreeSensitivePruning, uniform_sample
from .base import Recommender, SparseGraphs, user_item_matrices
from .registry import register

__all__ = ['LayerGCN', 'LayerGCNConfig']

#: MMRec's degree epsilon of the re-normalised pruned graph.
_DEGREE_EPS = 1e-7


@dataclass
class LayerGCNConfig(ModelConfig):
    """LayerGCN (MMRec's ``LayerGCN.yaml``)."""

    #: width d of the user and item embeddings.
    embedding_size: int = 64
    #: refined propagation layers L (their outputs are summed).
    n_layers: int = 4
    #: weight of the L2 penalty 1/2 sum ||E^0||^2 on the batch's ego embeddings
    #: (grid [1e-2, 1e-3, 1e-4, 1e-5]).
    reg_weight: float = 1e-3
    #: share p of the training edges pruned each epoch, alternately degree-sensitive
    #: and uniform; 0 keeps all (grid [0.0, 0.1, 0.2]).
    dropout: float = 0.1

    GRID: ClassVar[Dict[str, list]] = {
        'model.dropout': [0.0, 0.1, 0.2],
        'model.reg_weight': [1e-2, 1e-3, 1e-4, 1e-5],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_positive_int('model.n_layers', self.n_layers)
        check_range('model.reg_weight', self.reg_weight, 0.0)
        check_range('model.dropout', self.dropout, 0.0, 1.0, high_open=True)


@register('layergcn')
class LayerGCN(Recommender):
    """LayerGCN: layer-refined propagation with alternating edge pruning (see the
    module docstring)."""

    config_class = LayerGCNConfig
    stochastic_training = True
    reference = ('Zhou et al., "Layer-refined Graph Convolutional Networks for '
                 'Recommendation", ICDE 2023')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm()]

    def __init__(self, data, config: Optional[LayerGCNConfig] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        d = self.config.embedding_size
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.convs = torch.nn.ModuleList(
            [LightGCNConv() for _ in range(self.config.n_layers)])
        self.graphs = SparseGraphs()
        adj, r_hat = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        # The distinct training pairs and their sampling weights 1/sqrt(d_u d_i).
        self.pruning = DegreeSensitivePruning(r_hat, self.config.dropout, _DEGREE_EPS)
        self.reset_parameters()
        device = data['user', 'interacts', 'item'].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    # -- pruning -----------------------------------------------------------------------
    def sample_edges(self, epoch: int,
                     generator: Optional[torch.Generator] = None) -> Tensor:
        """Ids (into :attr:`pruning`'s edges) of the edges kept in ``epoch``:
        degree-sensitive in even epochs, uniform in odd ones, in ascending order."""
        if epoch % 2 == 0:
            return self.pruning.sample(generator)
        edges = self.pruning.edge_weight
        return uniform_sample(edges.numel(), self.pruning.num_kept, generator,
                              device=edges.device)

    def on_epoch_start(self, epoch: int) -> None:
        """Prune the user-item graph for ``epoch`` (the generator's seed is drawn from
        the global torch RNG)."""
        if self.config.dropout <= 0.0:
            return None
        seed = int(torch.randint(0, 2**62, (1, )).item())
        generator = torch.Generator(device=self.pruning.edge_weight.device)
        keep = self.sample_edges(epoch, generator.manual_seed(seed))
        self.graphs.set('pruned', self.pruning.adjacency(
            keep, self.user_embedding.weight.dtype), transpose=False)
        return None

    def user_item_graph(self) -> Tensor:
        """The pruned graph in training mode (once pruned), the full one in eval
        mode."""
        if self.training and 'pruned' in self.graphs:
            return self.graphs['pruned']
        return self.graphs['adj']

    # -- forward and loss --------------------------------------------------------------
    def embed(self) -> Tuple[Tensor, Tensor]:
        adj = self.user_item_graph()
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        h, out = ego, None
        for conv in self.convs:
            h = conv(h, adj, transpose=adj)  # symmetric
            h = F.cosine_similarity(h, ego, dim=-1).unsqueeze(1) * h
            out = h if out is None else out + h
        return out[:self.num_users], out[self.num_users:]

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        user, item = self.embed()
        u = user[users]
        diff = (u * item[neg]).sum(-1) - (u * item[pos]).sum(-1)
        bpr = batch.sum(F.softplus(diff))
        ego = (self.user_embedding(users).pow(2).sum(-1) +
               self.item_embedding(pos).pow(2).sum(-1) +
               self.item_embedding(neg).pow(2).sum(-1))
        reg = self.config.reg_weight * 0.5 * batch.sum(ego)
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}
