r"""DA-MRS (`"Improving Multi-modal Recommender Systems by Denoising and Aligning
Multi-modal Content and User Feedback" <https://github.com/XMUDM/DA-MRS>`_, Xv et
al., KDD 2024), as MMRec computes it (``src/models/damrs.py``, the LightGCN
backbone of the official ``XMUDM/DA-MRS``).

**Graphs** (on the data, from the training split and the raw features):

* per modality :math:`m`, the denoised kNN graph :math:`\mathbf{S}_m`
  (:class:`~mambarec_pyg.data.transforms.DenoisedItemKNN`): item pairs whose cosine
  similarity is at least the modality's mean in **every** modality are candidates;
  each item keeps its :math:`\min(k, c_i)` most similar candidates, binary weights
  normalised by the row degrees;
* the behaviour graph :math:`\mathbf{B}`: each item, itself, and its ``behavior_k``
  items of most shared training users among those with at least 2
  (:class:`~mambarec_pyg.data.transforms.ItemCooccurrence`; DA-MRS's
  ``build_iib_graph.py``, whose ``item_graph_dict_2.npy`` MMRec reads), binary,
  normalised by the row degrees (:func:`~mambarec_pyg.data.graphs.binary_graph_weights`).

**Forward.** The LightGCN layer mean on the normalised user-item graph
:math:`\hat{\mathbf{A}}` gives :math:`(\mathbf{e}_u, \mathbf{e}_i)`; the item ID
embeddings are propagated ``n_mm_layers`` times on each item graph,
:math:`\mathbf{h}_v = \mathbf{G}_v^{L_{mm}}\mathbf{E}_i` for the views
:math:`v \in \{1..M, s\}` (:math:`\mathbf{G}_m = \mathbf{S}_m`,
:math:`\mathbf{G}_s = \mathbf{B}`), and

.. math::
    \bar{\mathbf{h}} = \frac{1}{M+1}\sum_v \mathbf{h}_v, \qquad
    \hat y_{ui} = \mathbf{e}_u^\top(\mathbf{e}_i + \bar{\mathbf{h}}_i).

The raw features shape the graphs only (MMRec's projections of them are never used).

**Loss** (batch users :math:`u`, positives :math:`i`, negatives :math:`j`):

.. math::
    \mathcal{L} = \mathcal{L}_{\mathrm{BPR}}^{w} + \lambda_{nd}\,\mathcal{L}_{ND}
    + \lambda_{kl}\,\mathcal{L}_{KL}.

*Denoised BPR.* With :math:`p_v = \sigma(\mathbf{e}_u^\top\bar{\mathbf{h}}_{v,i})`
and :math:`n_v = \sigma(\mathbf{e}_u^\top\bar{\mathbf{h}}_{v,j})`
(:math:`\bar{\cdot}` row-normalised), the weights (constants, no gradient) are

.. math::
    w^+ = \mathrm{clip}_{[0,1]}\big(\mathrm{mean}_v p_v \cdot
    e^{-2\,\mathrm{var}_v p_v}\big), \quad
    w^- = \mathrm{clip}_{[0,1]}\big((\max_v p_v - \bar n)\,
    [\mathrm{mean}_v p_v < \bar n]\big),

:math:`\mathrm{var}` the unbiased variance over the :math:`M+1` views and
:math:`\bar n` the mean of :math:`n_v` over the views and the **whole batch**; then
:math:`\mathcal{L}_{\mathrm{BPR}}^{w} = \mathrm{mean}_b\big(-w^+\log\sigma(y_{ui} -
y_{uj}) - w^-\log\sigma(y_{uj} - y_{ui})\big)`: positives the views disagree on
count less, and a positive scored below the batch's negatives is pushed down.

*Alignment with user preference* (:math:`\mathcal{L}_{KL}`). Over the distinct
users :math:`\mathcal{U}_b` and items :math:`\mathcal{I}_b` (positives and
negatives) of the batch, :math:`P^g = \sigma(\mathbf{e}_u^\top\bar{\mathbf{e}}_i)`
and :math:`P^t = \sigma(\mathbf{e}_u^\top\bar{\bar{\mathbf{h}}}_i)`, and
:math:`\mathcal{L}_{KL}` is the mean over :math:`\mathcal{U}_b \times
\mathcal{I}_b` of the symmetric Bernoulli divergence
:math:`\mathrm{KL}(P^g\|P^t) + \mathrm{KL}(P^t\|P^g)`.

*Neighbour discrimination* (:math:`\mathcal{L}_{ND}`). For each view :math:`v` and
batch item :math:`i \in \mathcal{I}_b`, with :math:`c^v_{in} = \cos(\mathbf{h}_{v,i},
\mathbf{h}_{v,n})` and :math:`\pi^v_i = \mathrm{softmax}_n(c^v_{in})`, the pseudo
positives are the top ``num_pseudo_labels`` :math:`K` items of
:math:`\sum_w \pi^w_i + \pi^v_i` (:math:`\mathcal{P}^{mm}_i`) and the top :math:`K`
of :math:`\pi^v_i` outside them (:math:`\mathcal{P}^{s}_i`); with
:math:`E_X = \sum_{n \in X} e^{c^v_{in}/\tau}` (:math:`\tau = 0.2`),

.. math::
    \mathcal{L}_{ND}^v = \mathrm{mean}_{i}\Big(-\log\big(\tfrac{E_{\mathcal{P}^{mm}}}
    {E_{\mathrm{all}}} + 10^{-9}\big) - \log\big(\tfrac{E_{\mathcal{P}^{s}}}
    {E_{\mathrm{all}} - E_{\mathcal{P}^{mm}}} + 10^{-9}\big)\Big), \quad
    \mathcal{L}_{ND} = \mathrm{mean}_v \mathcal{L}_{ND}^v.

**More or fewer modalities.** MMRec's code is written for image and text (views t,
v, s). Here every modality of ``data.modalities`` is a view and the behaviour graph
the last; the candidates of the denoised graphs are the pairs similar in all of
them. With one modality there are two views.

**Where this differs from MMRec:**

* :math:`\mathcal{L}_{KL}` uses the closed form :math:`\mathrm{KL}(p\|q) +
  \mathrm{KL}(q\|p) = (p - q)(\mathrm{logit}\,p - \mathrm{logit}\,q)` on the logits.
  MMRec's formula (:math:`p\log p - p\log q + \dots` on the probabilities) has the
  same value, but gives NaN once a probability rounds to 0 or 1 (float32: a logit
  beyond about 17), which would end training; the closed form does not.
* The BPR terms are :math:`\mathrm{softplus}`, MMRec's ``log(sigmoid(.))`` without
  its :math:`-\infty` for large score differences.
* The pseudo-label probabilities and the weights :math:`w^\pm` carry no gradient
  (MMRec uses them as indices and ``.data`` only).
* In the denoised graphs a candidate is a pair above the mean in every modality and
  the :math:`\min(k, c_i)` neighbours are taken among candidates only (MMRec counts
  the non-zero masked similarities of the text modality and takes the top entries
  of the masked rows, the same set unless a candidate's similarity is exactly 0 or
  negative); ties go to the lower id; :math:`10^{-7}` is not added to the degrees.
* The behaviour graph's neighbours are tied towards the lower id (MMRec's file comes
  from ``torch.topk``).
* Batch-coupled terms (:math:`\bar n`, :math:`\mathcal{L}_{KL}`,
  :math:`\mathcal{L}_{ND}`) are computed over the global batch
  (:meth:`~mambarec_pyg.data.sampling.BPRBatch.gather`), the same on one process.

**Defaults** are MMRec's (single values in its yaml): ``kl_weight = 1``,
``neighbor_weight = 0.001``, ``n_mm_layers = 1``, ``n_ui_layers = 2``,
``knn_k = 10``, ``behavior_k = 2``. :attr:`DAMRSConfig.GRID` searches the two loss
weights over values of the yaml's commented grids: ``kl_weight`` [0.1, 1, 10] x
``neighbor_weight`` [0.01, 0.001, 0.0001] (9 runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import (ConfigError, ModelConfig, check_nonnegative_int,
                     check_positive_int, check_range)
from ..data.graphs import binary_graph_weights, sparse_from_edges
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..data.transforms import DenoisedItemKNN, ItemCooccurrence, UserItemNorm
from ..nn.conv import LightGCNPropagation, WeightedPropagation
from ..nn.losses import bpr_loss
from .base import Recommender, SparseGraphs, edge_matrix, user_item_matrices
from .registry import register

__all__ = ['DAMRS', 'DAMRSConfig', 'DAMRSOutput', 'denoising_weights',
           'symmetric_bernoulli_kl', 'neighbor_discrimination']

#: the fewest shared users of a behaviour-graph pair (DA-MRS's build script).
BEHAVIOR_MIN_COUNT = 2
#: the added constant inside the logarithms of the neighbour discrimination.
_LOG_EPS = 1e-9


@dataclass
class DAMRSConfig(ModelConfig):
    """DA-MRS (MMRec's ``DAMRS.yaml``)."""

    #: width d of the ID embeddings.
    embedding_size: int = 64
    #: LightGCN layers on the user-item graph (layer mean).
    n_ui_layers: int = 2
    #: propagation layers on each item graph (last layer kept).
    n_mm_layers: int = 1
    #: neighbours per item at most in the denoised modality graphs (itself included).
    knn_k: int = 10
    #: co-occurring items per item in the behaviour graph (MMRec's
    #: item_graph_dict_2.npy).
    behavior_k: int = 2
    #: weight of the alignment (symmetric KL) term.
    kl_weight: float = 1.0
    #: weight of the neighbour-discrimination term.
    neighbor_weight: float = 0.001
    #: pseudo-positive items per batch item and set in the neighbour
    #: discrimination (DA-MRS fixes 10).
    num_pseudo_labels: int = 10
    #: temperature of the neighbour discrimination (DA-MRS fixes 0.2).
    temperature: float = 0.2

    #: the two loss weights over values of the yaml's commented grids.
    GRID: ClassVar[Dict[str, list]] = {
        'model.kl_weight': [0.1, 1.0, 10.0],
        'model.neighbor_weight': [0.01, 0.001, 0.0001],
    }

    def __post_init__(self) -> None:
        for name in ('embedding_size', 'knn_k', 'behavior_k', 'num_pseudo_labels'):
            check_positive_int(f'model.{name}', getattr(self, name))
        for name in ('n_ui_layers', 'n_mm_layers'):
            check_nonnegative_int(f'model.{name}', getattr(self, name))
        check_range('model.kl_weight', self.kl_weight, 0.0)
        check_range('model.neighbor_weight', self.neighbor_weight, 0.0)
        check_range('model.temperature', self.temperature, 0.0, low_open=True)


class DAMRSOutput(NamedTuple):
    """One forward pass (:meth:`DAMRS.encode`)."""

    #: the LightGCN user embeddings :math:`\mathbf{e}_u` ``[U, d]``.
    user: Tensor
    #: the LightGCN item embeddings :math:`\mathbf{e}_i` ``[N, d]``.
    item: Tensor
    #: the item views :math:`\mathbf{h}_v` ``[N, d]``: the modalities, then the
    #: behaviour graph.
    views: List[Tensor]


# ---------------------------------------------------------------------------------
def denoising_weights(user: Tensor, pos_views: List[Tensor], neg_views: List[Tensor],
                      neg_mean: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""DA-MRS's weights :math:`(w^+, w^-)` of the batch's triples (no gradient).

    Args:
        user: ``[B, d]`` the users' embeddings.
        pos_views, neg_views: per view, ``[B, d]`` the positives' (negatives')
            view embeddings (normalised here).
        neg_mean: :math:`\bar n`, the mean of the negatives' view probabilities
            over the batch (default: over these rows).

    **Shapes:** output two ``[B]`` tensors.
    """
    with torch.no_grad():
        p = torch.stack([torch.sigmoid((user * F.normalize(h, dim=1)).sum(1))
                         for h in pos_views])
        if neg_mean is None:
            neg_mean = torch.stack([torch.sigmoid((user * F.normalize(h, dim=1)).sum(1))
                                    for h in neg_views]).mean()
        mean = p.mean(0)
        pos = (mean * torch.exp(-p.var(0)).square()).clamp(0.0, 1.0)
        neg = ((p.amax(0) - neg_mean) * (mean < neg_mean)).clamp(0.0, 1.0)
    return pos, neg


def symmetric_bernoulli_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(p\|q) + \mathrm{KL}(q\|p)` of Bernoulli distributions given
    by their logits, element-wise: :math:`(\sigma(a) - \sigma(b))(a - b)` (finite for
    any logits)."""
    return (torch.sigmoid(logits_p) - torch.sigmoid(logits_q)) * (logits_p - logits_q)


class _NeighborDiscrimination(torch.autograd.Function):
    r"""One view's :math:`\mathcal{L}_{ND}^v` from the cosines :math:`\mathbf{C} =
    \mathbf{a}\mathbf{b}^\top` (given, consumed) with a hand-written backward pass:
    with :math:`E = e^{\mathbf{C}/\tau}` and the row sums :math:`T` (all),
    :math:`M` (:math:`\mathcal{P}^{mm}`), :math:`S` (:math:`\mathcal{P}^{s}`),
    :math:`\partial\ell/\partial C_{in} = E_{in}(\ell_T + [n \in \mathcal{P}^{mm}]
    \ell_M + [n \in \mathcal{P}^{s}]\ell_S)/(\tau R)`, then
    :math:`\partial\mathbf{a} = G\mathbf{b}`, :math:`\partial\mathbf{b} =
    G^\top\mathbf{a}`. Keeps :math:`E` (one :math:`R \times N` matrix) and no other
    intermediate of that size."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, cos: Tensor, mm: Tensor, single: Tensor,
                temperature: float) -> Tensor:
        E = cos.div_(temperature).exp_()
        T = E.sum(1)
        E_mm, E_s = E.gather(1, mm), E.gather(1, single)
        M, S = E_mm.sum(1), E_s.sum(1)
        x, y = M / T + _LOG_EPS, S / (T - M) + _LOG_EPS
        loss = (-torch.log(x) - torch.log(y)).mean()
        # d loss_r / d (T, M, S)
        dS = -1.0 / (y * (T - M))
        dT = M / (x * T * T) - dS * S / (T - M)
        dM = -1.0 / (x * T) + dS * S / (T - M)
        ctx.save_for_backward(a, b, E, mm, single, E_mm * dM.unsqueeze(1),
                              E_s * dS.unsqueeze(1), dT)
        ctx.temperature = temperature
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        a, b, E, mm, single, g_mm, g_s, dT = ctx.saved_tensors
        G = E.mul_(dT.unsqueeze(1))
        G.scatter_add_(1, mm, g_mm).scatter_add_(1, single, g_s)
        G.mul_(grad_out / (ctx.temperature * a.size(0)))
        grad_a = G @ b if ctx.needs_input_grad[0] else None
        grad_b = G.t() @ a if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None, None, None


def neighbor_discrimination(views: List[Tensor], rows: Tensor, num_labels: int,
                            temperature: float, fused: bool = True) -> Tensor:
    r"""DA-MRS's :math:`\mathcal{L}_{ND}` (the mean over the views, see the module
    docstring) of the items ``rows``.

    Args:
        views: per view, ``[N, d]`` item embeddings.
        rows: ``[R]`` the (distinct) batch items.
        num_labels: :math:`K`.
        temperature: :math:`\tau`.
        fused: one :math:`R \times N` cosine product per view, shared by the
            pseudo-labels and the loss, whose gradient is hand-written
            (:class:`_NeighborDiscrimination`); ``False``: the loss through autograd
            on the gathered scores. Same values.
    """
    anchors = [F.normalize(h[rows], dim=1) for h in views]
    items = [F.normalize(h, dim=1) for h in views]
    with torch.no_grad():
        cosines = [a @ b.t() for a, b in zip(anchors, items)]
        # softmax without the max shift: cosines lie in [-1, 1]
        probs = [c.exp() for c in cosines]
        for prob in probs:
            prob.div_(prob.sum(dim=1, keepdim=True))
        total = probs[0].clone()
        for prob in probs[1:]:
            total.add_(prob)
    loss = anchors[0].new_zeros(())
    for v, (a, b, prob) in enumerate(zip(anchors, items, probs)):
        with torch.no_grad():
            mm = torch.topk(total + prob, num_labels, dim=1).indices
            single = torch.topk(prob.scatter_(1, mm, 0.0), num_labels, dim=1).indices
        if fused:
            loss = loss + _NeighborDiscrimination.apply(a, b, cosines[v], mm, single,
                                                        temperature)
            continue
        scores = torch.exp(a @ b.t() / temperature)
        all_ = scores.sum(1)
        mm_score = scores.gather(1, mm).sum(1)
        single_score = scores.gather(1, single).sum(1)
        loss = loss + (-torch.log(mm_score / all_ + _LOG_EPS)
                       - torch.log(single_score / (all_ - mm_score) + _LOG_EPS)).mean()
    return loss / len(views)


@register('damrs')
class DAMRS(Recommender):
    r"""DA-MRS (see the module docstring for the equations).

    Args:
        data (HeteroData): the dataset, with at least one item feature table.
        config (DAMRSConfig, optional): the model's options.
    """

    config_class = DAMRSConfig
    min_modalities = 1
    reference = ('Xv et al., "Improving Multi-modal Recommender Systems by Denoising '
                 'and Aligning Multi-modal Content and User Feedback", KDD 2024')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm(), DenoisedItemKNN(config.knn_k),
                ItemCooccurrence(config.behavior_k, BEHAVIOR_MIN_COUNT)]

    def __init__(self, data, config: Optional[DAMRSConfig] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        c = self.config
        d, n = c.embedding_size, self.num_items
        if c.num_pseudo_labels > n:
            raise ConfigError(f'model.num_pseudo_labels: expected at most the number '
                              f'of items ({n}), got {c.num_pseudo_labels}')
        dtype = torch.get_default_dtype()
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(n, d)
        self.propagation = LightGCNPropagation(c.n_ui_layers)
        self.item_view = WeightedPropagation()
        self.graphs = SparseGraphs()
        adj, _ = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        knn = DenoisedItemKNN(c.knn_k)
        self.view_names = [f'item_graph_{m}' for m in self.modalities] + ['behavior']
        for m, name in zip(self.modalities, self.view_names):
            self.graphs.set(name, edge_matrix(data, knn.edge_type(m)))
        cooc = data[ItemCooccurrence(c.behavior_k, BEHAVIOR_MIN_COUNT).edge_type]
        loops = torch.arange(n).repeat(2, 1)
        edges = torch.cat([loops, cooc.edge_index.cpu()], dim=1)
        self.graphs.set('behavior', sparse_from_edges(
            edges, binary_graph_weights(edges, n), (n, n), dtype=dtype, layout='csr'))
        self.reset_parameters()
        device = data[UI].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        """Xavier-uniform ID embeddings."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    # -- forward -----------------------------------------------------------------------
    def encode(self) -> DAMRSOutput:
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        user, item = self.propagation(x, self.graphs['adj']).split(
            [self.num_users, self.num_items])
        views = []
        for name in self.view_names:
            h = self.item_embedding.weight
            for _ in range(self.config.n_mm_layers):
                h = self.item_view(h, self.graphs[name],
                                   transpose=self.graphs[name + '_t'])
            views.append(h)
        return DAMRSOutput(user, item, views)

    def embed(self) -> Tuple[Tensor, Tensor]:
        out = self.encode()
        return out.user, out.item + sum(out.views) / len(out.views)

    # -- loss --------------------------------------------------------------------------
    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        """``{'total', 'bpr', 'nd', 'kl'}`` (``nd`` and ``kl`` unweighted)."""
        c = self.config
        users, pos, neg = batch
        out = self.encode()
        mean_view = sum(out.views) / len(out.views)
        item = out.item + mean_view
        e_u = out.user[users]
        # n-bar couples the batch: the mean over the global batch's negatives.
        with torch.no_grad():
            neg_probs = torch.stack([torch.sigmoid(
                (e_u * F.normalize(h[neg], dim=1)).sum(1)) for h in out.views], 1)
            neg_mean = batch.gather(neg_probs).mean()
        w_pos, w_neg = denoising_weights(e_u, [h[pos] for h in out.views],
                                         [h[neg] for h in out.views], neg_mean)
        s_pos, s_neg = (e_u * item[pos]).sum(1), (e_u * item[neg]).sum(1)
        bpr = batch.mean(w_pos * bpr_loss(s_pos, s_neg, reduction='none') +
                         w_neg * bpr_loss(s_neg, s_pos, reduction='none'))
        # The alignment and neighbour terms couple the batch: over the distinct users
        # and items of the global batch.
        user_rows = torch.unique(batch.gather(users))
        item_rows = torch.unique(torch.cat([batch.gather(pos), batch.gather(neg)]))
        u = out.user[user_rows]
        logits_g = u @ F.normalize(out.item[item_rows], dim=1).t()
        logits_t = u @ F.normalize(mean_view[item_rows], dim=1).t()
        kl = symmetric_bernoulli_kl(logits_g, logits_t).mean()
        nd = neighbor_discrimination(out.views, item_rows, c.num_pseudo_labels,
                                     c.temperature)
        total = bpr + c.neighbor_weight * nd + c.kl_weight * kl
        return {'total': total, 'bpr': bpr, 'nd': nd, 'kl': kl}
