r"""SLMRec (`"Self-supervised Learning for Multimedia Recommendation"
<https://doi.org/10.1109/TMM.2022.3187556>`_, Tao et al., IEEE TMM 2022), with its
fine-and-coarse (``FAC``) self-supervised task, as MMRec computes it
(``src/models/slmrec.py``; ../BASELINES.md §3.6).

**Branches.** The raw features of each modality :math:`m` are row-L2-normalised once
and frozen, then projected, :math:`\mathbf{P}_m = \mathrm{Lin}(D_m \to d)
(\mathbf{X}_m / \|\mathbf{X}_m\|)`. One ID branch and one branch per modality run
LightGCN on the normalised user-item graph
:math:`\hat{\mathbf{A}} = \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}` (no self
loops; :class:`~mambarec_pyg.data.transforms.UserItemNorm`), all starting from the
**same** user table :math:`\mathbf{E}_u`:

.. math::
    [\mathbf{b}^{0}_u; \mathbf{b}^{0}_i] = \mathrm{LGN}([\mathbf{E}_u; \mathbf{E}_i]),
    \qquad
    [\mathbf{b}^{m}_u; \mathbf{b}^{m}_i] = \mathrm{LGN}([\mathbf{E}_u; \mathbf{P}_m]),
    \qquad \mathrm{LGN}(\mathbf{x}) = \frac{1}{K+1}\sum_{k=0}^{K}
    \hat{\mathbf{A}}^k\mathbf{x}.

**Fusion** (``concat``): :math:`\mathbf{e}_u = \mathrm{Lin}_u([\mathbf{b}^0_u;
\mathbf{b}^1_u; \dots; \mathbf{b}^M_u])`, :math:`\mathbf{e}_i =
\mathrm{Lin}_i([\mathbf{b}^0_i; \dots; \mathbf{b}^M_i])`, each
:math:`\mathrm{Lin}((1+M)d \to d)`; the score is :math:`\mathbf{e}_u^\top
\mathbf{e}_i`. The branches are linear in their inputs and share the graph, so they
run as **one** LightGCN on the column-wise concatenation :math:`[\mathbf{E}_u, \dots,
\mathbf{E}_u; \mathbf{E}_i, \mathbf{P}_1, \dots, \mathbf{P}_M]` (one sparse product
per layer over :math:`(1+M)d` columns), whose output rows are exactly the concatenated
inputs of :math:`\mathrm{Lin}_u` and :math:`\mathrm{Lin}_i`.

**Main loss** (no BPR; the sampled negatives are unused): in-batch InfoNCE between
the L2-normalised user and positive item, temperature :math:`\tau` (``temp``),

.. math::
    \mathcal{L}_{main} = -\frac{1}{B}\sum_b \log
    \frac{\exp(\bar{\mathbf{e}}_{u_b}^\top \bar{\mathbf{e}}_{i_b} / \tau)}
         {\sum_{b'} \exp(\bar{\mathbf{e}}_{u_b}^\top \bar{\mathbf{e}}_{i_{b'}} / \tau)}.

**FAC** on the batch's positive items, with :math:`\mathrm{CE}(\mathbf{z},
\mathbf{y}) = -\frac{1}{B}\sum_b \log\mathrm{softmax}_{b'}(\mathbf{z}_b^\top
\mathbf{y}_{b'} / \tau_{ssl})_b` (no normalisation) and affine maps :math:`g`:

* fine alignment of the ID branch with the first modality: :math:`\mathbf{z}_1 =
  g_{id}(\mathbf{b}^0_i)`, :math:`\mathcal{L}_1 = \mathrm{CE}(\mathbf{z}_1,
  g_1(\mathbf{b}^1_i))`;
* coarse alignment: the joint space is mapped on, :math:`\mathbf{z}_{l+1} =
  c_l(\mathbf{z}_l)`, and a further modality :math:`k` aligned with it at its level
  :math:`l`, :math:`\mathcal{L}_k = \mathrm{CE}(\mathbf{z}_l,
  g_k(\mathbf{b}^k_i))`.

SLMRec's hierarchy for (visual, acoustic, text) has three levels: ID-v (width
:math:`d`), ID-v-a (:math:`d`), ID-v-a-t (:math:`d/2`). MMRec's code keeps that
hierarchy for its two modalities (v, t) with the acoustic loss commented out, so text
is reached through **both** maps (:math:`d \to d \to d/2`). Generalised to
:math:`M` modalities in ``data.modalities`` order (MMRec's loader: image, text): the
hierarchy has :math:`L = 1` level for :math:`M = 1` (as the original code on its
visual-only ``kwai`` data: :math:`\mathcal{L}_1` only) and :math:`L = \max(M, 3)`
levels otherwise, every level :math:`d` wide except the last (:math:`d/2`); modality
:math:`k < M` aligns at level :math:`k`, the last modality at level :math:`L`. With
two modalities this is exactly MMRec's computation (level 2 has no modality, as
MMRec's audio), with three exactly the original SLMRec's.

**Total** :math:`\mathcal{L} = \mathcal{L}_{main} + \alpha\sum_{k}\mathcal{L}_k`
(``ssl_alpha``); Adam's weight decay :math:`10^{-4}` on every parameter is the
protocol (:attr:`SLMRec.protocol`); the learning rate is the protocol's 1e-3 unless
set (MMRec searches [1e-4, 1e-3, 0.01, 0.1]; the official SLMRec code uses 0.01).
Initialisation as MMRec's: Xavier-uniform embeddings and weight matrices, PyTorch's
default biases.

Both losses couple the batch's rows (in-batch negatives). On several processes
(:mod:`~mambarec_pyg.train.distributed`) every process gathers the branch outputs
of the global batch's users and positive items (one ``batch.gather``) and computes
the fusion, :math:`\mathcal{L}_{main}` and FAC on all of them.

Where this differs from MMRec:

* **Scoring.** MMRec's ``full_sort_predict`` ranks with the embeddings cached by the
  last training batch's forward pass -- computed before that batch's optimiser step,
  so with the parameters one step older than the evaluated model -- and applies a
  sigmoid. Here :meth:`SLMRec.embed` recomputes the forward pass with the current
  parameters. The sigmoid is monotone and changes no ranking. The one-step lag does
  not change results materially: it evaluates the same trajectory one Adam step
  earlier (one of 59 per epoch at Baby scale). On ``tiny`` (3 seeds, 15 epochs, lr
  0.01 and 0.001, 7 steps per epoch) the valid Recall@20 of the two differed by 0.01
  on average, half the mean change from one epoch to the next, with no consistent
  sign, and the best epochs' values by at most 0.01 either way. No switch is exposed
  (the cache would also need a training step before the first evaluation).
* The degree epsilon :math:`10^{-8}` of MMRec's adjacency is not added (below float32
  resolution for degrees of at least 1).
* MMRec builds all six FAC maps, the acoustic one unused; only the used maps exist
  here (the initial random draws differ, nothing else).
* MMRec's ``reg`` grid axis is read by no code (the weight decay is the only L2
  term), so it is not exposed; ``ssl_task`` is fixed to ``FAC`` (MMRec's yaml), and
  ``dropout_rate`` (FD/FM tasks only), ``init`` (``xavier``), ``adj_type``
  (``pre``) and ``mm_fusion_mode`` (``concat``) are fixed to MMRec's values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, ModelConfig, check_positive_int, check_range
from ..data.sampling import BPRBatch
from ..data.transforms import UserItemNorm
from ..nn.conv import LightGCNPropagation
from ..nn.losses import info_nce
from .base import Recommender, SparseGraphs, user_item_matrices
from .registry import register

__all__ = ['SLMRec', 'SLMRecConfig']


@dataclass
class SLMRecConfig(ModelConfig):
    """SLMRec with the FAC task (MMRec's ``SLMRec.yaml``)."""

    #: width d of the embeddings and of each branch (MMRec's ``recdim``).
    embedding_size: int = 64
    #: LightGCN layers K of every branch (MMRec's ``layer_num``).
    n_layers: int = 3
    #: temperature of the main in-batch InfoNCE loss (MMRec's ``temp``).
    temp: float = 0.2
    #: temperature of the FAC alignment losses. MMRec's yaml lists only its grid
    #: [0.1, 0.2, 0.5, 1.0]; the default here is 0.2, the official SLMRec code's.
    ssl_temp: float = 0.2
    #: weight of the FAC losses. MMRec's yaml lists only its grid [0.01, 0.05, 0.1,
    #: 0.5, 1.0]; the default here is 0.1, the official SLMRec code's.
    ssl_alpha: float = 0.1

    # MMRec's grid, learning rate first; its 'reg' axis is read by nothing.
    GRID: ClassVar[Dict[str, list]] = {
        'train.lr': [1e-4, 1e-3, 0.01, 0.1],
        'model.ssl_temp': [0.1, 0.2, 0.5, 1.0],
        'model.ssl_alpha': [0.01, 0.05, 0.1, 0.5, 1.0],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        if self.embedding_size < 2:
            raise ConfigError(f'model.embedding_size: expected an integer >= 2 (the '
                              f'last FAC space is d/2 wide), got '
                              f'{self.embedding_size!r}')
        check_range('model.n_layers', self.n_layers, 0)
        check_range('model.temp', self.temp, 0.0, low_open=True)
        check_range('model.ssl_temp', self.ssl_temp, 0.0, low_open=True)
        check_range('model.ssl_alpha', self.ssl_alpha, 0.0)


def fac_levels(num_modalities: int) -> Tuple[int, List[int]]:
    """``(L, level of each modality)`` of the FAC hierarchy (0-based levels; see the
    module docstring): one level for one modality, else ``max(M, 3)`` levels with
    the last modality on the last one."""
    if num_modalities <= 1:
        return 1, [0] * num_modalities
    levels = max(num_modalities, 3)
    return levels, list(range(num_modalities - 1)) + [levels - 1]


def aligned_cross_entropy(z: Tensor, y: Tensor, temperature: float) -> Tensor:
    r""":math:`-\frac{1}{B}\sum_b \log\mathrm{softmax}(\mathbf{z}\mathbf{y}^\top /
    \tau)_{bb}`: in-batch InfoNCE on the rows as given (not normalised)."""
    # Scaling the (small) anchors saves a pass over the B x B logits.
    logits = (z * (1.0 / temperature)) @ y.t()
    return F.cross_entropy(logits, torch.arange(z.size(0), device=z.device))


@register('slmrec')
class SLMRec(Recommender):
    """SLMRec with the FAC self-supervised task (see the module docstring)."""

    config_class = SLMRecConfig
    min_modalities = 1
    protocol = {'lr_decay': 1.0, 'weight_decay': 1e-4}
    reference = ('Tao et al., "Self-supervised Learning for Multimedia '
                 'Recommendation", IEEE TMM 2022')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm()]

    def __init__(self, data, config: SLMRecConfig = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        d = self.config.embedding_size
        dtype = torch.get_default_dtype()
        width = (1 + len(self.modalities)) * d
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.dense = torch.nn.ModuleDict()
        for m in self.modalities:
            x = F.normalize(data['item'][m].detach().cpu().to(dtype), dim=1)
            # Derived from the data, which rebuilds the model: kept out of checkpoints.
            self.register_buffer(f'features_{m}', x, persistent=False)
            self.dense[m] = torch.nn.Linear(x.size(1), d)
        self.propagation = LightGCNPropagation(self.config.n_layers)
        self.user_fusion = torch.nn.Linear(width, d)
        self.item_fusion = torch.nn.Linear(width, d)
        self._build_fac(d)
        self.graphs = SparseGraphs()
        adj, _ = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        self.reset_parameters()

    def _build_fac(self, d: int) -> None:
        num_levels, self.fac_level = fac_levels(len(self.modalities))
        widths = [d] * (num_levels - 1) + [d // 2 if num_levels > 1 else d]
        self.id_head = torch.nn.Linear(d, widths[0])
        self.chain = torch.nn.ModuleList(
            [torch.nn.Linear(widths[l], widths[l + 1]) for l in range(num_levels - 1)])
        self.modality_heads = torch.nn.ModuleDict(
            {m: torch.nn.Linear(d, widths[level])
             for m, level in zip(self.modalities, self.fac_level)})

    def reset_parameters(self) -> None:
        """Xavier-uniform embeddings and weight matrices, default-initialised
        biases (MMRec's initialisation)."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for layer in self.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
                torch.nn.init.xavier_uniform_(layer.weight)

    def features(self, m: str) -> Tensor:
        """The row-normalised, frozen features of modality ``m``, ``[N, D_m]``."""
        return getattr(self, f'features_{m}')

    def branches(self) -> Tensor:
        r"""The LightGCN outputs of all branches side by side, ``[U + N, (1+M)d]``:
        column block 0 the ID branch, block :math:`k` modality :math:`k` (users
        first)."""
        items = [self.item_embedding.weight] + \
            [self.dense[m](self.features(m)) for m in self.modalities]
        users = self.user_embedding.weight.repeat(1, len(items))
        x = torch.cat([users, torch.cat(items, dim=1)])
        return self.propagation(x, self.graphs['adj'])

    def embed(self) -> Tuple[Tensor, Tensor]:
        h = self.branches()
        return (self.user_fusion(h[:self.num_users]),
                self.item_fusion(h[self.num_users:]))

    def fac_losses(self, item_branches: Tensor) -> Dict[str, Tensor]:
        """The FAC alignment loss of each modality, from the batch items' branch
        outputs ``[B, (1+M)d]``."""
        blocks = item_branches.split(self.config.embedding_size, dim=1)
        z, level = self.id_head(blocks[0]), 0
        losses = {}
        for k, m in enumerate(self.modalities):
            while level < self.fac_level[k]:
                z, level = self.chain[level](z), level + 1
            target = self.modality_heads[m](blocks[k + 1])
            losses[m] = aligned_cross_entropy(z, target, self.config.ssl_temp)
        return losses

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        """``main`` (InfoNCE), ``ssl_<m>`` (each modality's FAC loss), ``ssl``
        (their sum) and ``total`` = main + ssl_alpha * ssl; negatives unused."""
        users, pos, _ = batch
        # one gather (one scatter in the backward pass) for the batch's users and items
        rows = self.branches()[torch.cat([users, self.num_users + pos])]
        user, item = rows[:users.numel()], rows[users.numel():]
        if batch.shard is not None:
            # Both terms couple the batch's rows: every process computes them on
            # the whole global batch (one gather of the users' and items' rows).
            user, item = batch.gather(torch.cat([user, item], dim=1)).chunk(2, dim=1)
        main = info_nce(self.user_fusion(user), self.item_fusion(item),
                        self.config.temp)
        fac = self.fac_losses(item)
        ssl = torch.stack(list(fac.values())).sum()
        parts = {'total': main + self.config.ssl_alpha * ssl, 'main': main,
                 'ssl': ssl}
        parts.update({f'ssl_{m}': value for m, value in fac.items()})
        return parts
