r"""MVGAE ("Multi-Modal Variational Graph Auto-Encoder for Recommendation Systems", Yi
& Chen, IEEE TMM 2021), as MMRec computes it (``src/models/mvgae.py``,
``src/configs/model/MVGAE.yaml``).

**Encoders.** One variational graph encoder per modality :math:`m` and one for the
collaborative signal :math:`c`, each on its own item table :math:`\mathbf{F}`: the
frozen raw features :math:`\mathbf{X}_m`, or for :math:`c` an item ID table
:math:`\mathbf{C} \in \mathbb{R}^{N \times d}`. With user preferences
:math:`\mathbf{P} \in \mathbb{R}^{U \times d_l}` (per encoder), the projection
:math:`\mathrm{Lin}: D \to d_l` (``dim_latent`` :math:`d_l` = 128) and the graph
convolution of MMRec's ``BaseModel``

.. math::
    \mathrm{conv}(\mathbf{x}) = \mathrm{drop}_{0.1}\Big(\mathrm{normalize}\big(
    \bar{\mathbf{A}}\,\mathbf{x}\mathbf{W} + \mathbf{b}\big)\Big), \qquad
    \bar{\mathbf{A}} = \mathbf{D}^{-1}(\mathbf{A} + \mathbf{I})

(the mean over each node and its neighbours, as a product with the CSR matrix
:func:`~mambarec_pyg.models.lattice.self_loop_mean_adjacency`; inverted dropout in
training only, :func:`torch.nn.functional.dropout`),

.. math::
    \mathbf{x}^0 &= \mathrm{normalize}([\mathbf{P}; \mathrm{Lin}(\mathbf{F})]), \qquad
    \mathbf{x}^{l} = \mathrm{LReLU}\big(\mathbf{G}^l\,\mathrm{LReLU}(
    \mathrm{conv}^l(\mathbf{x}^{l-1}))\big) \quad (l = 1..L), \\
    \boldsymbol{\mu} &= \mathbf{G}^{\mu}\mathrm{LReLU}(\mathrm{conv}^{\mu}(
    \mathbf{x}^L)) + \mathrm{LReLU}(\mathrm{Lin}^{\mu}(\mathbf{x}^L)), \qquad
    \log\boldsymbol{\sigma}^2 = \mathbf{G}^{\sigma}\mathrm{LReLU}(
    \mathrm{conv}^{\sigma}(\mathbf{x}^L)) + \mathrm{LReLU}(\mathrm{Lin}^{\sigma}(
    \mathbf{x}^L)),

:math:`L` = ``n_layers`` (1 or 2), widths :math:`d_l \to d` in the first layer,
:math:`d \to d` after (:math:`d` = ``embedding_size``).

**Product of experts** (:func:`product_of_experts`): the modality experts are
combined, then the result with the collaborative expert,

.. math::
    \mathrm{PoE}(\{\boldsymbol{\mu}_e, \log\boldsymbol{\sigma}^2_e\}):\quad
    T_e = \frac{1}{\exp(\log\boldsymbol{\sigma}^2_e) + 10^{-8}}, \quad
    \boldsymbol{\mu} = \frac{\sum_e \boldsymbol{\mu}_e T_e}{\sum_e T_e}, \quad
    \log\boldsymbol{\sigma}^2 = -\log\sum_e T_e,

giving :math:`(\boldsymbol{\mu}, \log\boldsymbol{\sigma}^2)` of all :math:`U + N`
nodes. **Score**: :math:`\hat y_{ui} = \boldsymbol{\mu}_u^\top\boldsymbol{\mu}_i`
(with ``sigmoid_embeddings``: :math:`\sigma(\boldsymbol{\mu}_u)^\top
\sigma(\boldsymbol{\mu}_i)`).

**Loss.** In training :math:`\mathbf{z} = \boldsymbol{\mu} +
0.1\,\boldsymbol{\epsilon} \odot \exp(\frac{1}{2}\min(\log\boldsymbol{\sigma}^2,
10))`, :math:`\boldsymbol{\epsilon} \sim \mathcal{N}(0, \mathbf{I})`, for the joint
posterior and for every expert. With the decoder
:math:`s(\mathbf{z}, a, b) = \sigma(\mathbf{z}_a^\top\mathbf{z}_b)`
(:math:`\sigma(\mathbf{z})` in place of :math:`\mathbf{z}` with
``sigmoid_embeddings``),

.. math::
    R(\mathbf{z}) = -\sum_{b=1}^{B}\log_2\sigma\big(s(\mathbf{z}, u_b, i^+_b) -
    s(\mathbf{z}, u_b, i^-_b)\big), \qquad
    \mathrm{KL}(\boldsymbol{\mu}, \log\boldsymbol{\sigma}^2) = -\frac{1}{2}\,
    \mathrm{mean}_{n}\sum_{k}\big(1 + \ell_{nk} - \mu_{nk}^2 - e^{\ell_{nk}}\big)

(:math:`R` a **sum** over the batch; :math:`\ell = \min(\log\sigma^2, 10)`, the KL
mean over all :math:`U + N` nodes), and

.. math::
    \mathcal{L} = R(\mathbf{z}) + \beta\,\mathrm{KL}(\boldsymbol{\mu},
    \log\boldsymbol{\sigma}^2) + \sum_{e \in \{m\} \cup \{c\}} \big[R(\mathbf{z}_e) +
    \beta\,\mathrm{KL}(\boldsymbol{\mu}_e, \log\boldsymbol{\sigma}^2_e)\big],

:math:`\beta` = ``beta``. Item :math:`i` is node :math:`U + i` of :math:`\mathbf{z}`.

Where this differs from MMRec, and why. MMRec's code has four defects that change
what is learned; each is fixed here, with MMRec's behaviour as a switch (all four
switches together reproduce MMRec: ``mmrec_item_index``, ``mmrec_batch_negatives``,
``sigmoid_embeddings`` true and ``train_id_embeddings`` false). Measured on ``tiny``
(batch 128, lr 0.01, 30 epochs, seed 999; best-epoch valid / test Recall@20, against
most-popular's 0.545 / 0.520): MMRec's computation 0.46 / 0.51, all fixes 0.765 /
0.745; one of MMRec's behaviours at a time: item index 0.505 / 0.495, batch negatives
0.605 / 0.475, sigmoid branch 0.395 / 0.41, fixed ID tables 0.79 / 0.79 (the one
change that did not hurt there; it is still a fixed random table where the code
meant a trained one, as in MMGCN).

* **Item rows in the loss.** MMRec's ``calculate_loss`` indexes :math:`\mathbf{z}`
  with the raw item ids (``z[pos_items]``, ``z[neg_items]``) although the items are
  nodes :math:`U..U+N-1` (MMRec's DualGNN and DRAGON add ``n_users``; MVGAE does
  not): its reconstruction scores users against **user** rows, while ranking uses
  the item rows. ``mmrec_item_index=True`` reproduces it.
* **Negatives.** MMRec's ``dot_product_decode_neg`` is written for several negatives
  per user (the max over them); fed MMRec's one negative per triple, its
  ``users.repeat(1, neg_items.size(0))`` broadcasts every user against **all** the
  batch's negatives and keeps the hardest. Here each user is scored against its own
  negative; ``mmrec_batch_negatives=True`` reproduces the max over the batch (its
  rows gathered over processes under data parallelism).
* **The sigmoid branch.** MMRec hard-codes the authors' ``'amazon'`` branch, which
  squashes the latents with a sigmoid before the decoder: with :math:`d = 64` the
  decoder's input :math:`\sigma(\mathbf{z}_u)^\top\sigma(\mathbf{z}_i) \approx 16`
  at initialisation, so :math:`s = \sigma(16.7) = 1` in float32 for positives and
  negatives alike and the reconstruction has **no gradient**: only the KL terms
  train. Here the authors' other branch is the default (raw latents, scores
  :math:`\boldsymbol{\mu}`); ``sigmoid_embeddings=True`` reproduces MMRec.
* **Trained ID tables.** MMRec builds the user preferences and the collaborative item
  table as plain tensors (``xavier_normal_(torch.rand(..., requires_grad=True))``),
  not parameters: they keep their random values for the whole run (as in MMRec's
  MMGCN). Here they are parameters; ``train_id_embeddings=False`` reproduces MMRec
  (fixed buffers, saved with the model).

And, changing nothing that is learned:

* **Scores.** MMRec ranks with the latents cached by the last training forward (with
  its dropout); here :meth:`MVGAE.embed` recomputes them in eval mode (no dropout)
  with the current weights.
* **Any number of modalities**: the first product of experts runs over all modalities
  of ``data.modalities`` (MMRec's code needs exactly image and text).
* **Dead code not reproduced**: ``linear_layer1`` / ``linear_layer2`` (computed and
  discarded when ``concate`` is false, as it is); the ``concate`` variant itself.
  The noise draws come from torch's global generator (as MMRec's ``randn_like``).
* :math:`-\log_2\sigma(\cdot)` is computed as :math:`\mathrm{softplus}(-\cdot)/\ln 2`.

Initialisation as MMRec: Xavier-normal weights for the projections, the convolutions,
:math:`\mathrm{Lin}^{\mu}`, :math:`\mathrm{Lin}^{\sigma}`, :math:`\mathbf{G}^1`,
:math:`\mathbf{G}^{\mu}`, :math:`\mathbf{G}^{\sigma}`, the preferences and the
collaborative table; the convolutions' biases uniform in
:math:`\pm 1/\sqrt{\text{in}}`; PyTorch's default for the other biases and for
:math:`\mathbf{G}^2`.

**Defaults.** MMRec's yaml fixes ``n_layers`` 1 and gives the grid ``learning_rate``
[1e-4, 1e-3, 0.01, 0.1] x ``beta`` [0.01, 0.1, 1] (12 runs, :attr:`MVGAEConfig.GRID`);
the defaults are ``beta`` 0.1 (the middle) and the protocol's learning rate 1e-3
(MMRec's ``overall.yaml``, in the grid).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, ModelConfig, check_choice, check_positive_int, \
    check_range
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..nn.conv import WeightedPropagation
from ..nn.functional import frozen_product, normalize_rows
from .base import Recommender, SparseGraphs
from .lattice import self_loop_mean_adjacency
from .registry import register

__all__ = ['MVGAE', 'MVGAEConfig', 'MVGAEEncoder', 'product_of_experts']

#: MMRec's clamp of the log-variance and the scale of the sampling noise.
MAX_LOGVAR = 10.0
NOISE_SCALE = 0.1
#: the dropout after every graph convolution (MMRec's ``BaseModel.update``).
CONV_DROPOUT = 0.1


def product_of_experts(mu: Sequence[Tensor], logvar: Sequence[Tensor],
                       eps: float = 1e-8) -> Tuple[Tensor, Tensor]:
    r"""The product of independent Gaussian experts :math:`(\boldsymbol{\mu}_e,
    \log\boldsymbol{\sigma}^2_e)`: precisions :math:`T_e = 1/(\exp(\log
    \boldsymbol{\sigma}^2_e) + \epsilon)`, :math:`\boldsymbol{\mu} = \sum_e
    \boldsymbol{\mu}_e T_e / \sum_e T_e`, :math:`\log\boldsymbol{\sigma}^2 =
    -\log\sum_e T_e` (element-wise).

    Shapes:
        - **input:** sequences of :math:`(n, d)` tensors, one per expert
        - **output:** ``(mu, logvar)``, :math:`(n, d)` each
    """
    precision = [1.0 / (torch.exp(lv) + eps) for lv in logvar]
    total = sum(precision)
    mean = sum(m * t for m, t in zip(mu, precision)) / total
    return mean, -torch.log(total)


class MVGAEEncoder(torch.nn.Module):
    r"""One variational graph encoder of MVGAE (MMRec's ``GCN``; the equations are
    in the module docstring).

    Args:
        num_users (int): :math:`U` (rows of the preferences).
        feature_dim (int): :math:`D` of the item table.
        dim (int): :math:`d`.
        dim_latent (int): :math:`d_l`.
        num_layers (int): :math:`L` (1 or 2).
        train_preference (bool): the preferences are a parameter (else a buffer).

    Shapes:
        - **input:** item table :math:`(N, D)`, mean adjacency :math:`(U+N, U+N)` and
          its transpose (sparse)
        - **output:** ``(mu, logvar)``, :math:`(U + N, d)` each
    """

    def __init__(self, num_users: int, feature_dim: int, dim: int = 64,
                 dim_latent: int = 128, num_layers: int = 1,
                 train_preference: bool = True) -> None:
        super().__init__()
        pref = torch.empty(num_users, dim_latent)
        if train_preference:
            self.preference = torch.nn.Parameter(pref)
        else:
            self.register_buffer('preference', pref)
        self.mlp = torch.nn.Linear(feature_dim, dim_latent)
        widths = [dim_latent] + [dim] * num_layers
        # conv^l, G^l (l = 1..L), then conv, Lin, G of mu and of logvar
        self.conv_weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(widths[l], dim)) for l in range(num_layers)]
            + [torch.nn.Parameter(torch.empty(dim, dim)) for _ in range(2)])
        self.conv_biases = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(dim)) for _ in range(num_layers + 2)])
        self.gates = torch.nn.ModuleList([torch.nn.Linear(dim, dim)
                                          for _ in range(num_layers + 2)])
        self.linear_mu = torch.nn.Linear(dim, dim)
        self.linear_logvar = torch.nn.Linear(dim, dim)
        self.num_layers = num_layers
        self.widths = widths
        self.propagate = WeightedPropagation()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MMRec's initialisation (see the module docstring)."""
        torch.nn.init.xavier_normal_(self.preference)
        self.mlp.reset_parameters()
        torch.nn.init.xavier_normal_(self.mlp.weight)
        ins = self.widths[:self.num_layers] + [self.widths[-1]] * 2
        for w, b, fan_in in zip(self.conv_weights, self.conv_biases, ins):
            torch.nn.init.xavier_normal_(w)
            bound = 1.0 / math.sqrt(fan_in)
            torch.nn.init.uniform_(b, -bound, bound)
        for k, gate in enumerate(self.gates):
            gate.reset_parameters()
            if not (self.num_layers == 2 and k == 1):  # G^2 keeps PyTorch's default
                torch.nn.init.xavier_normal_(gate.weight)
        for lin in (self.linear_mu, self.linear_logvar):
            lin.reset_parameters()
            torch.nn.init.xavier_normal_(lin.weight)

    def conv(self, k: int, x: Tensor, adj: Tensor, adj_t: Tensor) -> Tensor:
        r"""Convolution ``k``: :math:`\mathrm{drop}(\mathrm{normalize}(\bar{\mathbf{A}}
        \mathbf{x}\mathbf{W}_k + \mathbf{b}_k))`."""
        h = self.propagate(x @ self.conv_weights[k], adj, transpose=adj_t)
        h = normalize_rows(h + self.conv_biases[k])
        return F.dropout(h, CONV_DROPOUT, self.training)

    def forward(self, features: Tensor, adj: Tensor, adj_t: Tensor,
                frozen_features: bool = True) -> Tuple[Tensor, Tensor]:
        item = (frozen_product(features, self.mlp.weight.t()) if frozen_features
                else features @ self.mlp.weight.t()) + self.mlp.bias
        x = normalize_rows(torch.cat([self.preference, item]))
        for k in range(self.num_layers):
            x = F.leaky_relu(self.gates[k](F.leaky_relu(self.conv(k, x, adj, adj_t))))
        L = self.num_layers
        mu = self.gates[L](F.leaky_relu(self.conv(L, x, adj, adj_t))) + \
            F.leaky_relu(self.linear_mu(x))
        logvar = self.gates[L + 1](F.leaky_relu(self.conv(L + 1, x, adj, adj_t))) + \
            F.leaky_relu(self.linear_logvar(x))
        return mu, logvar


@dataclass
class MVGAEConfig(ModelConfig):
    """MVGAE (MMRec's ``MVGAE.yaml``)."""

    #: width d of the latent means and variances.
    embedding_size: int = 64
    #: width d_l of the encoders' input projection and preferences (MMRec: 128).
    dim_latent: int = 128
    #: graph layers L before the mean and variance heads (1 or 2).
    n_layers: int = 1
    #: weight beta of the KL terms (grid [0.01, 0.1, 1]).
    beta: float = 0.1
    #: train the user preferences and the collaborative item table; false: fixed
    #: random buffers, as MMRec's plain tensors.
    train_id_embeddings: bool = True
    #: reproduce MMRec's loss, which indexes z with raw item ids (user rows) instead
    #: of the item nodes U + i.
    mmrec_item_index: bool = False
    #: reproduce MMRec's negatives: every user against the hardest of the batch's
    #: negatives (max over the batch) instead of its own.
    mmrec_batch_negatives: bool = False
    #: squash the latents with a sigmoid before the decoder and for the scores (the
    #: 'amazon' branch MMRec always takes; saturated at d = 64, see the docstring).
    sigmoid_embeddings: bool = False

    GRID: ClassVar[Dict[str, list]] = {
        'train.lr': [1e-4, 1e-3, 1e-2, 1e-1],
        'model.beta': [0.01, 0.1, 1.0],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_positive_int('model.dim_latent', self.dim_latent)
        check_choice('model.n_layers', self.n_layers, (1, 2))
        check_range('model.beta', self.beta, 0.0)
        for name in ('train_id_embeddings', 'mmrec_item_index',
                     'mmrec_batch_negatives', 'sigmoid_embeddings'):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f'model.{name}: expected true or false, got '
                                  f'{getattr(self, name)!r}')


def kl_term(mu: Tensor, logvar: Tensor) -> Tensor:
    r""":math:`-\frac{1}{2}\mathrm{mean}_n\sum_k(1 + \ell - \mu^2 - e^{\ell})` with
    :math:`\ell = \min(\log\sigma^2, 10)`."""
    logvar = logvar.clamp(max=MAX_LOGVAR)
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean()


@register('mvgae')
class MVGAE(Recommender):
    """MVGAE: variational graph encoders per modality fused by products of experts
    (see the module docstring)."""

    config_class = MVGAEConfig
    min_modalities = 1
    stochastic_training = True  # dropout and sampled latents
    reference = ('Yi & Chen, "Multi-Modal Variational Graph Auto-Encoder for '
                 'Recommendation Systems", IEEE TMM 2021')

    def __init__(self, data, config: Optional[MVGAEConfig] = None) -> None:
        super().__init__(data, config)
        c = self.config
        dtype = torch.get_default_dtype()
        device = data[UI].edge_index.device
        for m in self.modalities:
            self.register_buffer(f'feature_{m}',
                                 data['item'][m].detach().cpu().to(dtype).clone(),
                                 persistent=False)
        collaborative = torch.empty(self.num_items, c.embedding_size)
        if c.train_id_embeddings:
            self.collaborative = torch.nn.Parameter(collaborative)
        else:
            self.register_buffer('collaborative', collaborative)
        self.encoders = torch.nn.ModuleDict({
            m: MVGAEEncoder(self.num_users, data['item'][m].size(1), c.embedding_size,
                            c.dim_latent,
                            c.n_layers, c.train_id_embeddings)
            for m in self.modalities})
        self.collaborative_encoder = MVGAEEncoder(
            self.num_users, c.embedding_size, c.embedding_size, c.dim_latent,
            c.n_layers, c.train_id_embeddings)
        self.graphs = SparseGraphs()
        self.graphs.set('adj', self_loop_mean_adjacency(data, dtype))
        self.reset_parameters()
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        for enc in (*self.encoders.values(), self.collaborative_encoder):
            enc.reset_parameters()
        torch.nn.init.xavier_normal_(self.collaborative)

    def feature(self, m: str) -> Tensor:
        return getattr(self, f'feature_{m}')

    # -- forward -----------------------------------------------------------------------
    def experts(self) -> Tuple[List[Tuple[Tensor, Tensor]], Tuple[Tensor, Tensor]]:
        """``([(mu_m, logvar_m) per modality], (mu_c, logvar_c))``."""
        adj, adj_t = self.graphs['adj'], self.graphs['adj_t']
        modal = [self.encoders[m](self.feature(m), adj, adj_t) for m in self.modalities]
        collab = self.collaborative_encoder(self.collaborative, adj, adj_t,
                                            frozen_features=False)
        return modal, collab

    @staticmethod
    def joint(modal, collab) -> Tuple[Tensor, Tensor]:
        """The product of the modality experts, then with the collaborative one."""
        mu, logvar = product_of_experts([e[0] for e in modal], [e[1] for e in modal])
        return product_of_experts([mu, collab[0]], [logvar, collab[1]])

    def embed(self) -> Tuple[Tensor, Tensor]:
        mu, _ = self.joint(*self.experts())
        z = torch.sigmoid(mu) if self.config.sigmoid_embeddings else mu
        return z[:self.num_users], z[self.num_users:]

    def sample(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """:math:`\\boldsymbol{\\mu} + 0.1\\,\\boldsymbol{\\epsilon}\\odot
        \\exp(\\frac{1}{2}\\min(\\log\\boldsymbol{\\sigma}^2, 10))` in training, the
        mean in eval mode."""
        if not self.training:
            return mu
        std = torch.exp(0.5 * logvar.clamp(max=MAX_LOGVAR))
        return mu + torch.randn_like(mu) * NOISE_SCALE * std

    # -- loss ------------------------------------------------------------------------
    def reconstruction(self, z: Tensor, batch: BPRBatch) -> Tensor:
        """:math:`R(\\mathbf{z})`: the base-2 BPR sum over the batch (each user
        against its own negative, or with ``mmrec_batch_negatives`` the hardest of
        the batch's negatives)."""
        users, pos, neg = batch
        c = self.config
        offset = 0 if c.mmrec_item_index else self.num_users
        if c.sigmoid_embeddings:
            z = torch.sigmoid(z)
        u = z[users]
        pos_score = torch.sigmoid((u * z[pos + offset]).sum(-1))
        if c.mmrec_batch_negatives:
            negatives = batch.gather(z[neg + offset])
            neg_score = torch.sigmoid((u @ negatives.t()).amax(dim=1))
        else:
            neg_score = torch.sigmoid((u * z[neg + offset]).sum(-1))
        return batch.sum(F.softplus(neg_score - pos_score)) / math.log(2.0)

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        beta = self.config.beta
        modal, collab = self.experts()
        mu, logvar = self.joint(modal, collab)
        z = self.sample(mu, logvar)
        recon = self.reconstruction(z, batch)
        kl = kl_term(mu, logvar)
        expert_terms = mu.new_zeros(())
        for e_mu, e_logvar in [*modal, collab]:
            z_e = self.sample(e_mu, e_logvar)
            expert_terms = expert_terms + self.reconstruction(z_e, batch) + \
                beta * kl_term(e_mu, e_logvar)
        total = recon + beta * kl + expert_terms
        return {'total': total, 'recon': recon, 'kl': kl, 'experts': expert_terms}
