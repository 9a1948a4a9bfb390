r"""LGMRec (`"LGMRec: Local and Global Graph Learning for Multimodal Recommendation"
<https://arxiv.org/abs/2312.16400>`_, Guo et al., AAAI 2024), as MMRec and the
official code compute it (``src/models/lgmrec.py``; ../BASELINES.md §3.9).

**Local graph embedding.** The collaborative graph embedding (CGE) is the LightGCN
layer mean on the normalised user-item graph :math:`\hat{\mathbf{A}}`
(:class:`~mambarec_pyg.data.transforms.UserItemNorm`),

.. math::
    \mathbf{E}^c = \frac{1}{L+1}\sum_{l=0}^{L}\hat{\mathbf{A}}^l
    [\mathbf{E}_u; \mathbf{E}_i] \qquad (L = \texttt{n\_ui\_layers}).

The modality graph embedding (MGE) of modality :math:`m` projects the **frozen** raw
features :math:`\mathbf{X}_m` with a trainable :math:`\mathbf{W}_m \in
\mathbb{R}^{D_m \times d}`, gives each user the mean of its training items, and
propagates :math:`L_m` = ``n_mm_layers`` times, keeping the last layer only:

.. math::
    \bar{\mathbf{I}}_m = \mathbf{X}_m\mathbf{W}_m, \quad
    \bar{\mathbf{U}}_m = \mathrm{diag}\Big(\frac{1}{|\mathcal{N}_u| + 10^{-7}}\Big)
    \mathbf{R}\,\bar{\mathbf{I}}_m, \quad
    \mathbf{E}^m = \hat{\mathbf{A}}^{L_m}[\bar{\mathbf{U}}_m; \bar{\mathbf{I}}_m],
    \quad
    \mathbf{E}^l = \mathbf{E}^c + \textstyle\sum_m \mathrm{norm}(\mathbf{E}^m),

with :math:`\mathbf{R}` the binary training interactions and :math:`\mathrm{norm}`
the row-wise L2 normalisation.

**Global hypergraph embedding.** Per modality, ``hyper_num`` = :math:`K` hyperedges
with soft assignments from a trainable :math:`\mathbf{V}_m \in \mathbb{R}^{D_m
\times K}` (the user logits are the item logits summed over the user's items),

.. math::
    \mathbf{H}_i^m = \mathrm{GumbelSoftmax}_\tau(\mathbf{X}_m\mathbf{V}_m), \quad
    \mathbf{H}_u^m = \mathrm{GumbelSoftmax}_\tau(\mathbf{R}\,\mathbf{X}_m
    \mathbf{V}_m), \quad \tau = 0.2,

where :math:`\mathrm{GumbelSoftmax}_\tau(\mathbf{Z}) = \mathrm{softmax}((\mathbf{Z}
+ \mathbf{G})/\tau)` row-wise with standard Gumbel noise :math:`\mathbf{G}` (the
soft, not straight-through, form). In training both go through dropout with
:math:`p = 1 - \texttt{keep\_rate}` (inverted: kept entries scaled by
``1 / keep_rate``). The hypergraph layer, repeated ``n_hyper_layer`` times from the
items of the CGE (:math:`\mathbf{E}_i^{m,0} = \mathbf{E}^c_{\mathrm{items}}`), is

.. math::
    \boldsymbol{\Lambda} = \mathbf{H}_i^{m\top}\mathbf{E}_i^{m,h}, \quad
    \mathbf{E}_i^{m,h+1} = \mathbf{H}_i^m\boldsymbol{\Lambda}, \quad
    \mathbf{E}_u^{m,h+1} = \mathbf{H}_u^m\boldsymbol{\Lambda},

and :math:`\mathbf{E}^g = \sum_m [\mathbf{E}_u^m; \mathbf{E}_i^m]` (last layer). The
final embeddings and the score are

.. math::
    \mathbf{E} = \mathbf{E}^l + \alpha\,\mathrm{norm}(\mathbf{E}^g), \qquad
    \hat y_{ui} = \mathbf{e}_u^\top\mathbf{e}_i.

**Loss.**

.. math::
    \mathcal{L} = \mathrm{BPR} + \lambda_{cl}\,\mathcal{L}_{HCL} + \lambda_{reg}\,
    \frac{\|\mathbf{E}_{u_b}\|_F + \|\mathbf{E}_{i^+_b}\|_F +
    \|\mathbf{E}_{i^-_b}\|_F}{B}

(MMRec's ``EmbLoss``, Frobenius norms not squared, on the batch's **final**
embeddings). The hypergraph contrastive term of two modalities :math:`a, b` is

.. math::
    \mathcal{L}_{HCL}^{ab} = T(\mathbf{E}_u^a[u_b], \mathbf{E}_u^b[u_b],
    \mathbf{E}_u^b) + T(\mathbf{E}_i^a[i^+_b], \mathbf{E}_i^b[i^+_b],
    \mathbf{E}_i^b), \quad
    T(\mathbf{a}, \mathbf{p}, \mathbf{C}) = -\sum_{b=1}^{B}\log
    \frac{\exp(\cos(\mathbf{a}_b, \mathbf{p}_b)/\tau)}
         {\sum_{n}\exp(\cos(\mathbf{a}_b, \mathbf{c}_n)/\tau)}

(:func:`hcl_loss`): a **sum** over the batch (not a mean; duplicates of a user in the
batch count each time), with **all** users (items) as candidates, the positive
included.

**Several processes** (:mod:`~mambarec_pyg.train.distributed`): BPR is a mean
over the global batch (``batch.mean``), each EmbLoss norm the global batch's (from
the gathered row norms, :func:`~mambarec_pyg.nn.losses.emb_loss`), and
:math:`\mathcal{L}_{HCL}` a sum over the triples whose candidates are all users
(items), not the batch's: each process's sum, scaled by ``batch.sum``. The Gumbel
noise and dropout masks cover whole tables and are the same on every process.

**More or fewer modalities.** MMRec's code is written for exactly image (v) and
text (t). Here :math:`\mathbf{E}^l` and :math:`\mathbf{E}^g` sum over every modality
of ``data.modalities``, and :math:`\mathcal{L}_{HCL}` is the sum of
:math:`\mathcal{L}_{HCL}^{ab}` over **all pairs** :math:`a < b` in the order of
``data.modalities`` (:math:`a` the anchor, :math:`b` the positive and the
candidates); for ``('image', 'text')`` that is MMRec's single term with v as the
anchor. With one modality there is no HCL term (the loss has no ``'hcl'`` part). At
least one modality is needed (without features the model is LightGCN).

**Inference (a defect of MMRec's code, fixed here).** MMRec's ``full_sort_predict``
calls ``forward()``, and ``F.gumbel_softmax`` samples noise whatever the mode, so its
evaluation scores are random (dropout is off in eval mode). Here eval mode uses the
noiseless soft assignment :math:`\mathrm{softmax}(\mathbf{Z}/\tau)` and no dropout,
so evaluation and serving are deterministic. ``noisy_inference=True`` reproduces
MMRec (Gumbel noise in eval mode, no dropout; each evaluation then also advances
torch's random stream). It changes rankings, not only values: on ``tiny``, the best
checkpoint of a 12-epoch run (B = 128, lr 0.01) scored valid / test Recall@20
0.790 / 0.780 deterministically and 0.770-0.790 / 0.765-0.795 over five noisy
evaluations of the same weights.

**Random numbers.** In training the Gumbel noise and the dropout masks are drawn from
torch's global generator (:meth:`LGMRec.gumbel_noise`, :meth:`LGMRec.dropout_mask`),
so seeded runs repeat and a resumed run continues the same stream.

**Implementation.** Propagation on :math:`\hat{\mathbf{A}}` and :math:`\mathbf{R}`
goes through PyG ``MessagePassing`` layers on CSR matrices
(:class:`~mambarec_pyg.nn.LightGCNPropagation`,
:class:`~mambarec_pyg.nn.conv.LightGCNConv`,
:class:`~mambarec_pyg.nn.WeightedPropagation`). Each modality's projection and
hyperedge logits come from one product :math:`\mathbf{X}_m[\mathbf{W}_m\,
\mathbf{V}_m]` (:func:`frozen_product`); all modalities share one product with
:math:`\mathbf{R}` and one per MGE layer; the hypergraph layers are dense
:math:`[N, K]` / :math:`[U, K]` products (:mod:`mambarec_pyg.nn.hypergraph`). The
HCL term (:func:`hcl_loss`) scores each
distinct batch row once (weighted by its count), computes the :math:`[B, U]` cosines
in the :math:`K`-dimensional space of the hyperedges (the hypergraph embeddings are
:math:`\mathbf{H}\boldsymbol{\Lambda}`), and reduces them block by block with a
hand-written backward pass (:func:`row_logsumexp_sum`); row normalisations use
:func:`normalize_rows`. Every fast path is tested against its plain counterpart
(values and gradients).

**Not exposed.** MMRec's ``cf_model: mf`` option (CGE without propagation; the yaml
uses ``lightgcn``) and ``feat_embed_dim`` (must equal ``embedding_size``, since
:math:`\mathbf{E}^m` is added to :math:`\mathbf{E}^c`). :math:`\tau` is one option
(``tau``) for both the Gumbel softmax and the HCL term, as in MMRec.

**Defaults** are MMRec's active (Baby) block of ``LGMRec.yaml``. The per-dataset
blocks (:data:`DATASET_DEFAULTS`, to pass to ``Config.with_overrides``):

========  =============  =========  =========  =====
dataset   n_hyper_layer  hyper_num  keep_rate  alpha
========  =============  =========  =========  =====
baby      1              4          0.5        0.3
sports    1              4          0.4        0.6
clothing  2              64         0.2        0.2
========  =============  =========  =========  =====

(Sports and Clothing are commented blocks of the yaml; the official Sports training
log used ``n_hyper_layer = 4``.) Every dataset shares ``n_ui_layers = 2``,
``n_mm_layers = 2``, ``cl_weight = 1e-4``, ``reg_weight = 1e-6``.

**Grid.** MMRec's yaml grids are single values; the official yaml documents the
search space (``n_ui_layers``/``n_mm_layers`` 1-4, ``n_hyper_layer`` 1-4,
``hyper_num`` 2-256, ``keep_rate`` 0.1-1, ``alpha`` 0-1, ``cl_weight`` /
``reg_weight`` 0 or 1e-6-0.1). :attr:`LGMRecConfig.GRID` searches the two options
whose best values differ most between the datasets, over the values of the three
dataset blocks: ``keep_rate`` [0.2, 0.4, 0.5] x ``alpha`` [0.2, 0.3, 0.6] (9 runs).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..config import ConfigError, ModelConfig, check_positive_int, check_range
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..data.transforms import UserItemNorm
from ..nn.conv import LightGCNConv, LightGCNPropagation, WeightedPropagation
from ..nn.functional import frozen_product, normalize_rows
from ..nn.hypergraph import hcl_loss, hypergraph_propagation, row_logsumexp_sum
from ..nn.losses import bpr_loss, emb_loss
from .base import Recommender, SparseGraphs, user_item_matrices
from .registry import register

__all__ = ['LGMRec', 'LGMRecConfig', 'LGMRecOutput', 'DATASET_DEFAULTS', 'hcl_loss',
           'row_logsumexp_sum']

#: MMRec's per-dataset blocks of ``LGMRec.yaml`` as ``Config.with_overrides`` keys
#: (Baby is the active block and the config's defaults; Sports and Clothing are
#: commented blocks there, the official Sports log used ``n_hyper_layer = 4``).
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'baby': {'model.n_hyper_layer': 1, 'model.hyper_num': 4, 'model.keep_rate': 0.5,
             'model.alpha': 0.3},
    'sports': {'model.n_hyper_layer': 1, 'model.hyper_num': 4, 'model.keep_rate': 0.4,
               'model.alpha': 0.6},
    'clothing': {'model.n_hyper_layer': 2, 'model.hyper_num': 64,
                 'model.keep_rate': 0.2, 'model.alpha': 0.2},
}


@dataclass
class LGMRecConfig(ModelConfig):
    """LGMRec (MMRec's ``LGMRec.yaml``, Baby block; see :data:`DATASET_DEFAULTS`)."""

    #: width d of the ID embeddings and of the projected modality features.
    embedding_size: int = 64
    #: LightGCN layers of the collaborative graph embedding (layer mean).
    n_ui_layers: int = 2
    #: propagation layers of each modality graph embedding (last layer kept).
    n_mm_layers: int = 2
    #: hypergraph layers (at least 1).
    n_hyper_layer: int = 1
    #: hyperedges K per modality.
    hyper_num: int = 4
    #: keep probability of the dropout on the hyperedge assignments in training
    #: (1 = no dropout).
    keep_rate: float = 0.5
    #: weight of the normalised global (hypergraph) embeddings in the final ones.
    alpha: float = 0.3
    #: temperature of the Gumbel softmax and of the HCL term (MMRec fixes 0.2).
    tau: float = 0.2
    #: weight of the hypergraph contrastive (HCL) term.
    cl_weight: float = 1e-4
    #: weight of the EmbLoss regulariser on the batch's final embeddings.
    reg_weight: float = 1e-6
    #: draw Gumbel noise in eval mode too, as MMRec's code does (random evaluation
    #: scores); off: the noiseless soft assignment softmax(logits / tau).
    noisy_inference: bool = False

    #: ``keep_rate`` x ``alpha`` over the values of MMRec's three dataset blocks.
    GRID: ClassVar[Dict[str, list]] = {
        'model.keep_rate': [0.2, 0.4, 0.5],
        'model.alpha': [0.2, 0.3, 0.6],
    }

    def __post_init__(self) -> None:
        for name in ('embedding_size', 'n_hyper_layer', 'hyper_num'):
            check_positive_int(f'model.{name}', getattr(self, name))
        for name in ('n_ui_layers', 'n_mm_layers'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f'model.{name}: expected an integer >= 0, got '
                                  f'{value!r}')
        check_range('model.keep_rate', self.keep_rate, 0.0, 1.0, low_open=True)
        check_range('model.tau', self.tau, 0.0, low_open=True)
        for name in ('alpha', 'cl_weight', 'reg_weight'):
            check_range(f'model.{name}', getattr(self, name), 0.0)
        if not isinstance(self.noisy_inference, bool):
            raise ConfigError(f'model.noisy_inference: expected true or false, got '
                              f'{self.noisy_inference!r}')


class LGMRecOutput(NamedTuple):
    """Everything one forward pass computes (:meth:`LGMRec.encode`)."""

    #: final user embeddings ``[U, d]``.
    user: Tensor
    #: final item embeddings ``[N, d]``.
    item: Tensor
    #: per modality, the hypergraph user embeddings :math:`\mathbf{E}_u^m` ``[U, d]``.
    hyper_user: Dict[str, Tensor]
    #: per modality, the hypergraph item embeddings :math:`\mathbf{E}_i^m` ``[N, d]``.
    hyper_item: Dict[str, Tensor]
    #: per modality, ``(H_u [U, K], H_i [N, K], Lambda [K, d])`` of the last
    #: hypergraph layer: ``hyper_user = H_u @ Lambda``, ``hyper_item = H_i @ Lambda``
    #: (the assignments as used, after noise and dropout).
    hyper_factors: Dict[str, Tuple[Tensor, Tensor, Tensor]]


# ---------------------------------------------------------------------------------
@register('lgmrec')
class LGMRec(Recommender):
    r"""LGMRec (see the module docstring for the equations).

    Args:
        data (HeteroData): the dataset, with at least one item feature table
            ``data['item'][m]`` (frozen here) and the training interactions.
        config (LGMRecConfig, optional): the model's options.
    """

    config_class = LGMRecConfig
    min_modalities = 1
    stochastic_training = True  # Gumbel noise and dropout on the hyperedges
    protocol = {'lr_decay': 1.0, 'weight_decay': 0.0}
    reference = ('Guo et al., "LGMRec: Local and Global Graph Learning for '
                 'Multimodal Recommendation", AAAI 2024')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm()]

    def __init__(self, data, config: Optional[LGMRecConfig] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        c = self.config
        d, k = c.embedding_size, c.hyper_num
        dtype = torch.get_default_dtype()
        device = data[UI].edge_index.device

        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        # Frozen raw features: buffers, rebuilt from the data (not in the state dict).
        for m in self.modalities:
            self.register_buffer(f'feature_{m}',
                                 data['item'][m].detach().cpu().to(dtype).clone(),
                                 persistent=False)
        dims = {m: data['item'][m].size(1) for m in self.modalities}
        # W_m [D_m, d]: the projections of the modality graph embeddings.
        self.projections = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.empty(dims[m], d)) for m in self.modalities})
        # V_m [D_m, K]: the hyperedge logits.
        self.hyperedges = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.empty(dims[m], k)) for m in self.modalities})

        self.collaborative = LightGCNPropagation(c.n_ui_layers)
        self.modality_layers = torch.nn.ModuleList(
            [LightGCNConv() for _ in range(c.n_mm_layers)])
        self.to_users = WeightedPropagation()

        self.graphs = SparseGraphs()
        adj, r_hat = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        # The binary interactions R (the pattern of r_hat), and 1 / (|N_u| + 1e-7).
        crow, col = r_hat.crow_indices(), r_hat.col_indices()
        ones = torch.ones(col.numel(), dtype=dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support')
            r = torch.sparse_csr_tensor(crow, col, ones, r_hat.shape,
                                        check_invariants=False)
        self.graphs.set('r', r)
        degree = (crow[1:] - crow[:-1]).to(torch.float64)
        self.register_buffer('user_scale', (1.0 / (degree + 1e-7)).to(dtype)
                             .view(-1, 1), persistent=False)

        self.reset_parameters()
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        """Xavier-uniform ID embeddings, projections and hyperedge weights (MMRec's
        order: users, items, then per modality W_m, V_m)."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for m in self.modalities:
            torch.nn.init.xavier_uniform_(self.projections[m])
            torch.nn.init.xavier_uniform_(self.hyperedges[m])

    def feature(self, m: str) -> Tensor:
        """The frozen feature table :math:`\\mathbf{X}_m` ``[N, D_m]``."""
        return getattr(self, f'feature_{m}')

    # -- random draws (torch's global generator) ------------------------------------
    def gumbel_noise(self, logits: Tensor) -> Tensor:
        """Standard Gumbel noise shaped like ``logits``, as ``F.gumbel_softmax``
        draws it."""
        return -torch.empty_like(logits).exponential_().log()

    def dropout_mask(self, h: Tensor) -> Tensor:
        """Inverted-dropout mask shaped like ``h``: ``1 / keep_rate`` with
        probability ``keep_rate``, else 0."""
        keep = self.config.keep_rate
        return torch.empty_like(h).bernoulli_(keep).div_(keep)

    # -- forward ------------------------------------------------------------------
    def assignment(self, logits: Tensor) -> Tensor:
        r"""Soft hyperedge assignment of ``logits`` ``[n, K]``: the Gumbel softmax
        and dropout in training, :math:`\mathrm{softmax}(\mathbf{Z}/\tau)` in eval
        mode (Gumbel noise too with ``noisy_inference``)."""
        if self.training or self.config.noisy_inference:
            logits = logits + self.gumbel_noise(logits)
        h = torch.softmax(logits / self.config.tau, dim=1)
        if self.training and self.config.keep_rate < 1.0:
            h = h * self.dropout_mask(h)
        return h

    def hypergraph(self, h_item: Tensor, h_user: Tensor, items: Tensor
                   ) -> Tuple[Tensor, Tensor, Tensor]:
        """``n_hyper_layer`` hypergraph layers from the item embeddings ``items``:
        ``(user [U, d], item [N, d], hyperedges [K, d])`` of the last layer."""
        return hypergraph_propagation(h_item, h_user, items, self.config.n_hyper_layer)

    def encode(self) -> LGMRecOutput:
        """One forward pass (see the module docstring)."""
        c = self.config
        U, N, d, k = self.num_users, self.num_items, c.embedding_size, c.hyper_num
        mods, M = self.modalities, len(self.modalities)
        adj = self.graphs['adj']
        # (Tensors are cut with split(), whose backward pass is one concatenation.)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        content = self.collaborative(ego, adj)                          # E^c

        # X_m [W_m V_m] per modality; then one R product for all of them.
        item_feats, item_logits = [], []
        for m in mods:
            z = frozen_product(self.feature(m), torch.cat([self.projections[m],
                                                           self.hyperedges[m]], dim=1))
            feats, logits = z.split([d, k], dim=1)
            item_feats.append(feats)
            item_logits.append(logits)
        summed = self.to_users(torch.cat(item_feats + item_logits, dim=1),
                               self.graphs['r'], transpose=self.graphs['r_t'])
        user_feats, user_logits = summed.split([M * d, M * k], dim=1)

        # MGE: [U_m; I_m] of every modality side by side, n_mm_layers hops.
        h = torch.cat([user_feats * self.user_scale, torch.cat(item_feats, dim=1)])
        for conv in self.modality_layers:
            h = conv(h, adj, transpose=adj)
        local = content + normalize_rows(h.view(U + N, M, d)).sum(dim=1)

        # Global hypergraph embedding, from the items of E^c.
        content_items = content.split([U, N])[1]
        hyper_user, hyper_item, factors = {}, {}, {}
        for m, i_logits, u_logits in zip(mods, item_logits, user_logits.split(k, 1)):
            h_item = self.assignment(i_logits)
            h_user = self.assignment(u_logits)
            hyper_user[m], hyper_item[m], lam = self.hypergraph(h_item, h_user,
                                                                content_items)
            factors[m] = (h_user, h_item, lam)
        glob = torch.cat([sum(hyper_user.values()), sum(hyper_item.values())])
        user, item = (local + c.alpha * normalize_rows(glob)).split([U, N])
        return LGMRecOutput(user, item, hyper_user, hyper_item, factors)

    def embed(self) -> Tuple[Tensor, Tensor]:
        out = self.encode()
        return out.user, out.item

    # -- loss ---------------------------------------------------------------------
    def hcl(self, out: LGMRecOutput, users: Tensor, items: Tensor) -> Tensor:
        """The (unweighted) hypergraph contrastive term over all modality pairs."""
        tau = self.config.tau
        total = out.user.new_zeros(())
        for a, b in combinations(self.modalities, 2):
            h_user, h_item, lam = out.hyper_factors[b]
            total = total + hcl_loss(out.hyper_user[a], out.hyper_user[b], users,
                                     tau, (h_user, lam))
            total = total + hcl_loss(out.hyper_item[a], out.hyper_item[b], items,
                                     tau, (h_item, lam))
        return total

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        out = self.encode()
        u, i, j = out.user[users], out.item[pos], out.item[neg]
        bpr = bpr_loss((u * i).sum(dim=-1), (u * j).sum(dim=-1), batch)
        reg = self.config.reg_weight * emb_loss(u, i, j, batch=batch)
        parts = {'bpr': bpr, 'reg': reg}
        total = bpr + reg
        if len(self.modalities) > 1:
            weight = self.config.cl_weight
            # a sum over the triples (every user or item is a candidate, not only
            # the batch's): this process's sum, scaled by BPRBatch.sum
            hcl = weight * batch.sum(self.hcl(out, users, pos)) if weight else \
                bpr.new_zeros(())
            parts['hcl'] = hcl
            total = total + hcl
        return {'total': total, **parts}
