r"""BM3 (`"Bootstrap Latent Representations for Multi-modal Recommendation"
<https://arxiv.org/abs/2207.05969>`_, Zhou et al., WWW 2023), as MMRec computes it
(``src/models/bm3.py``, identical in the official ``enoche/BM3``;
../BASELINES.md §3.10). BM3 is in MambaRec's related work, not its Table 2.

**Online encoders.** LightGCN (``n_layers`` :math:`L`) on the normalised user-item
graph :math:`\hat{\mathbf{A}}` with a residual ID term for items, and one projection
per modality of the **trainable** raw features:

.. math::
    [\mathbf{U}; \mathbf{I}'] = \frac{1}{L+1}\sum_{l=0}^{L}
    \hat{\mathbf{A}}^l [\mathbf{E}_u; \mathbf{E}_i], \qquad
    \mathbf{I} = \mathbf{I}' + \mathbf{E}_i, \qquad
    \tilde{\mathbf{X}}_m = T_m(\mathbf{X}_m),

:math:`T_m` a ``Linear(D_m -> d)`` with a Xavier-normal weight. A shared predictor
:math:`p` (``Linear(d, d)``, Xavier-normal weight) gives the online views
:math:`p(\mathbf{U}), p(\mathbf{I}), p(\tilde{\mathbf{X}}_m)`.

**Target views** (no gradient): dropout of the online embeddings,
:math:`\bar{\mathbf{Z}} = \mathbf{Z} \odot \mathbf{M} / (1 - q)` with
:math:`\mathbf{M}_{ij} \sim \mathrm{Bernoulli}(1 - q)`, :math:`q` = ``dropout``, for
:math:`\mathbf{Z} \in \{\mathbf{U}, \mathbf{I}, \tilde{\mathbf{X}}_m\}` (masks over the
whole tables, as MMRec's ``F.dropout``, then the batch rows). No other augmentation
and no negatives: the batch's negatives are ignored.

**Loss** on the batch's :math:`B` pairs :math:`(u, i)`, with
:math:`c(a, b) = 1 - \frac{1}{B}\sum_b \cos(a_b, b_b)`:

.. math::
    \mathcal{L} = \underbrace{c(p(\mathbf{U})_u, \bar{\mathbf{I}}_i)
    + c(p(\mathbf{I})_i, \bar{\mathbf{U}}_u)}_{\texttt{align}}
    + \underbrace{\lambda_{reg}\,
    \frac{\|\mathbf{U}\|_F + \|\mathbf{I}\|_F}{N}}_{\texttt{reg}}
    + \lambda_{cl} \underbrace{\sum_m \big[c(p(\tilde{\mathbf{X}}_m)_i,
    \bar{\mathbf{I}}_i) + c(p(\tilde{\mathbf{X}}_m)_i,
    \bar{\tilde{\mathbf{X}}}_{m,i})\big]}_{\texttt{cl}}.

The regulariser is MMRec's ``EmbLoss(U, I)`` on the **full** tables: the Frobenius
norms (not squared) of the whole user matrix :math:`\mathbf{U}` ``[U, d]`` and the
whole item matrix :math:`\mathbf{I}` ``[N, d]`` (LightGCN outputs, residual included,
before the predictor), summed and divided by the number of items :math:`N` (the rows
of EmbLoss's last argument) -- not by the batch size. :math:`\lambda_{cl}` =
``cl_weight`` = 2. MMRec's two modalities (text and image) become the sum over the
modalities here. On several processes (:mod:`~mambarec_pyg.train.distributed`) each
:math:`c(\cdot,\cdot)` is a mean of per-triple cosines over the global batch
(``batch.mean``), the regulariser reads no batch row, and the dropout masks, drawn
over the whole tables from one generator, are the same on every process.

**Score**: :math:`\hat y_{ui} = p(\mathbf{U})_u^\top p(\mathbf{I})_i`, with the full
(undropped) online embeddings.

The equations above are MMRec's code, the reference for the published numbers. In
the paper's terms, ``align`` is the graph-reconstruction loss and the two terms per
modality are the inter-modality alignment and the intra-modality masking losses; the
code weighs both of these by ``cl_weight``. The target views come from the online
encoders themselves under ``no_grad`` (no separate target network).

Where this differs from MMRec (nothing that changes what is learned):

* The predictor runs on the batch rows only; MMRec applies it to the whole tables
  and then takes the rows. (The modality projections run on the whole feature
  tables, as in MMRec: the gradient of a trainable table is dense anyway, and one
  whole-table product costs less than gathering rows and scattering their gradient.)
  The dropout masks of the target views are drawn over the whole tables.
* The masks are drawn as ``rand >= q`` (with :attr:`BM3.generator`, or the global
  RNG), MMRec's ``F.dropout`` with ``bernoulli``: the same distribution, other draws.
* MMRec's trainer samples no negatives for BM3 (``use_neg_sampling: False``); here
  the shared sampler draws them and the loss ignores them.
* ``feat_embed_dim`` is ``embedding_size`` (both 64 in MMRec).

Defaults (MMRec's yaml gives only the grid): ``n_layers`` 1, ``dropout`` 0.5,
``reg_weight`` 0.1, the official README's best row for Baby.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, ModelConfig, check_positive_int, check_range
from ..data.sampling import BPRBatch
from ..data.transforms import UserItemNorm
from ..nn.conv import LightGCNPropagation
from ..nn.losses import emb_loss
from .base import Recommender, SparseGraphs, feature_table, user_item_matrices
from .registry import register

__all__ = ['BM3', 'BM3Config']


@dataclass
class BM3Config(ModelConfig):
    """BM3 (MMRec's ``BM3.yaml``; defaults: the official README's Baby row)."""

    #: raw feature tables are trainable parameters (as released); false freezes
    #: them (no gradient and no optimizer state: a third of their memory at
    #: most, and the frozen tables share the data's memory).
    trainable_features: bool = True
    #: width d of the ID embeddings, the modality projections and the predictor.
    embedding_size: int = 64
    #: LightGCN layers L on the user-item graph (grid [1, 2]).
    n_layers: int = 1
    #: dropout rate q of the target views (grid [0.3, 0.5]).
    dropout: float = 0.5
    #: weight of EmbLoss(U, I) = (||U||_F + ||I||_F) / N on the full tables (grid
    #: [0.1, 0.01]).
    reg_weight: float = 0.1
    #: weight of the modality alignment and masking terms.
    cl_weight: float = 2.0

    GRID: ClassVar[Dict[str, list]] = {
        'model.n_layers': [1, 2],
        'model.dropout': [0.3, 0.5],
        'model.reg_weight': [0.1, 0.01],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        if not isinstance(self.n_layers, int) or isinstance(self.n_layers, bool) or \
                self.n_layers < 0:
            raise ConfigError(f'model.n_layers: expected an integer >= 0, got '
                              f'{self.n_layers!r}')
        check_range('model.dropout', self.dropout, 0.0, 1.0, high_open=True)
        check_range('model.reg_weight', self.reg_weight, 0.0)
        check_range('model.cl_weight', self.cl_weight, 0.0)


def _target_view(rows: Tensor, mask: Optional[Tensor], index: Tensor) -> Tensor:
    """The target view of the batch rows ``rows`` (taken at ``index`` of their table):
    detached, times the table's dropout mask at those rows (``None``: no dropout)."""
    rows = rows.detach()
    return rows if mask is None else rows * mask[index]


def _alignment(online: Tensor, target: Tensor, batch: BPRBatch) -> Tensor:
    """:math:`1 - ` the batch mean of the row cosines (the target without grad; the
    mean over the global batch, :meth:`BPRBatch.mean`)."""
    return 1.0 - batch.mean(F.cosine_similarity(online, target.detach(), dim=-1))


@register('bm3')
class BM3(Recommender):
    """BM3: self-supervised bootstrapping without negatives (see the module
    docstring)."""

    config_class = BM3Config
    min_modalities = 1
    stochastic_training = True
    reference = ('Zhou et al., "Bootstrap Latent Representations for Multi-modal '
                 'Recommendation", WWW 2023')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm()]

    def __init__(self, data, config: Optional[BM3Config] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        d = self.config.embedding_size
        dtype = torch.get_default_dtype()
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.features = torch.nn.ParameterDict({
            m: feature_table(data['item'][m], dtype, self.config.trainable_features)
            for m in self.modalities})
        self.projections = torch.nn.ModuleDict({
            m: torch.nn.Linear(self.features[m].size(1), d) for m in self.modalities})
        self.predictor = torch.nn.Linear(d, d)
        self.propagation = LightGCNPropagation(self.config.n_layers)
        self.graphs = SparseGraphs()
        adj, _ = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        #: the generator of the target-view dropout masks (``None``: the global RNG,
        #: which checkpoints save and restore).
        self.generator: Optional[torch.Generator] = None
        self.reset_parameters()
        device = data['user', 'interacts', 'item'].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        """Xavier-uniform ID embeddings; Xavier-normal weights of the predictor and
        the projections, PyTorch's default for their biases (the feature tables keep
        their current values)."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for layer in (self.predictor, *self.projections.values()):
            layer.reset_parameters()
            torch.nn.init.xavier_normal_(layer.weight)

    # -- encoders ----------------------------------------------------------------------
    def encode(self) -> Tuple[Tensor, Tensor]:
        r"""The online :math:`(\mathbf{U}, \mathbf{I})` before the predictor."""
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.propagation(x, self.graphs['adj'])
        return out[:self.num_users], out[self.num_users:] + self.item_embedding.weight

    def project(self, modality: str) -> Tensor:
        r""":math:`\tilde{\mathbf{X}}_m = T_m(\mathbf{X}_m)` ``[N, d]``."""
        return self.projections[modality](self.features[modality])

    def embed(self) -> Tuple[Tensor, Tensor]:
        user, item = self.encode()
        return self.predictor(user), self.predictor(item)

    # -- target views and loss ---------------------------------------------------------
    def dropout_mask(self, shape, like: Tensor) -> Optional[Tensor]:
        """The scaled keep mask ``(rand >= q) / (1 - q)`` of a target view (``None``
        for ``q = 0``), drawn with :attr:`generator`."""
        q = self.config.dropout
        if q <= 0.0:
            return None
        r = torch.rand(shape, generator=self.generator, device=like.device,
                       dtype=like.dtype)
        return (r >= q).to(like.dtype).div_(1.0 - q)

    @torch.no_grad()
    def target_masks(self, like: Tensor) -> List[Optional[Tensor]]:
        """The dropout masks of the target views over the whole tables, in the order
        U ``[U, d]``, I ``[N, d]``, then each modality ``[N, d]``."""
        d = like.size(1)
        shapes = [(self.num_users, d)] + [(self.num_items, d)] * (
            1 + len(self.modalities))
        return [self.dropout_mask(shape, like) for shape in shapes]

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, items = batch[0], batch[1]  # the negatives are ignored
        user, item = self.encode()
        masks = self.target_masks(user)
        u, i = user[users], item[items]
        u_target = _target_view(u, masks[0], users)
        i_target = _target_view(i, masks[1], items)
        u_online, i_online = self.predictor(torch.cat([u, i])).split(
            [users.numel()] * 2)
        align = _alignment(u_online, i_target, batch) + \
            _alignment(i_online, u_target, batch)
        reg = self.config.reg_weight * emb_loss(user, item)
        cl = align.new_zeros(())
        for m, mask in zip(self.modalities, masks[2:]):
            x = self.project(m)[items]
            x_online = self.predictor(x)
            cl = cl + _alignment(x_online, i_target, batch) + \
                _alignment(x_online, _target_view(x, mask, items), batch)
        total = align + reg + self.config.cl_weight * cl
        return {'total': total, 'align': align, 'reg': reg, 'cl': cl}
