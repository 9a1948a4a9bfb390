r"""MambaRec: multimodal recommendation with local and global alignment
(`"MambaRec" <https://doi.org/10.1145/3746252>`_, CIKM 2025) on PyTorch Geometric.

Two variants (:attr:`MambaRecConfig.variant`):

``'reference'`` (default) computes exactly what the authors' released implementation
computes, which produced the published numbers (docs/reference.md §2-§5):

1. raw feature tables :math:`\mathbf{X}_m` (trainable, initialised from the data);
2. projection :math:`f_m`: for the reduced modalities (default: ``image``)
   :math:`D_m \to D_m/r \to d` (two affine stages), for the others :math:`D_m \to d`;
3. :math:`g_m = \mathrm{DREAM}_m(f_m)` (local alignment);
4. :math:`h_m = \mathrm{Dropout}(\mathrm{LayerNorm}(g_m))`, one LayerNorm shared;
5. gated item vectors :math:`e_m = \mathbf{E}_{\mathrm{item}} \odot
   \sigma(\mathrm{Lin}_m(h_m))`;
6. content view :math:`c`: LightGCN layer mean on the normalised user-item graph
   from :math:`[\mathbf{E}_{\mathrm{user}}; \mathbf{E}_{\mathrm{item}}]`;
7. modality views :math:`z_m = [\hat{\mathbf{R}} \mathbf{S}_m^{L'} e_m;
   \mathbf{S}_m^{L'} e_m]` on the item-item kNN graph :math:`\mathbf{S}_m`;
8. fusion: :math:`a = \mathrm{softmax}_m(q(z_m))` with a shared
   :math:`q = \mathrm{Lin}(d \to 1)\circ\tanh\circ\mathrm{Lin}(d \to d)`,
   :math:`\mathrm{common} = \sum_m a_m z_m`,
   :math:`s_m = \sigma(\mathrm{Lin}'_m(c)) \odot (z_m - \mathrm{common})`,
   :math:`\mathrm{side} = (\sum_m s_m + \mathrm{common}) / (M + 1)`;
   with one modality :math:`\mathrm{side} = z_m`;
9. final embeddings :math:`c + \mathrm{side}`, scores are dot products.

Loss per batch (users :math:`u`, positives :math:`i`, negatives :math:`j`):
:math:`\mathcal{L}_{\mathrm{BPR}} + \lambda_{\mathrm{reg}}
(\|e_u\|^2 + \|e_i\|^2 + \|e_j\|^2) / 2B + \lambda_{\mathrm{cl}}
(\mathrm{InfoNCE}(\mathrm{side}_i, c_i) + \mathrm{InfoNCE}(\mathrm{side}_u, c_u)) +
\lambda_{\mathrm{mmd}} \mathrm{MMD}(\bar g_v[i], \bar g_t[i])` with :math:`\bar g`
the L2-normalised DREAM outputs. With more than two modalities the MMD term is the
mean over all modality pairs; with one modality there is no MMD term.

``'paper'`` follows the paper's text where it differs (docs/reference.md §6): every
reduced modality (default: all) is projected by one linear map to
:math:`d' = \lfloor \min_m D_m / r \rfloor`; DREAM uses the paper's channel and
spatial attention and maps :math:`d'` input channels to :math:`d` output channels
(open point 1), keeping the released :math:`1\times1` conv + BatchNorm + ReLU from the
:math:`5d` fused map back to :math:`d` (open point 2); the InfoNCE term pairs the
DREAM outputs of two modalities of the same batch positive (mean over modality pairs;
none with one modality). Without local alignment the paper variant projects
:math:`D_m \to d' \to d` (two affine stages), since nothing else would lift
:math:`d'` to the :math:`d`-wide gates.

Implementation notes (each fast path keeps its plain counterpart as an option and is
tested against it):

* The released loss runs every DREAM a second time for the MMD term. In training mode
  that second pass gives the same values, so the first pass is reused (identical
  gradients); its only other effect, a second update of the BatchNorm running
  statistics with the same batch statistics, is reproduced exactly by updating once
  with momentum :math:`1 - (1 - m)^2` (and counting the batch twice). This happens in
  :meth:`MambaRec.loss` in training mode whenever the released loss would run the
  second pass: reference variant, local and global alignment on, two or more
  modalities (also with ``mmd_weight = 0``); :meth:`MambaRec.forward` updates once.
* :meth:`MambaRec.loss` computes a loss term whose weight is 0 (e.g. InfoNCE during a
  warm-up) without gradient, for logging only.
* :attr:`MambaRecConfig.propagation` ``'fused'`` runs the LightGCN layer mean and the
  kNN / item-to-user steps through :mod:`mambarec_pyg.nn.conv`'s fused autograd
  functions; ``'pyg'`` through PyG's :class:`~torch_geometric.nn.conv.LGConv` and
  :class:`~mambarec_pyg.nn.conv.WeightedPropagation` layers.
* :attr:`MambaRecConfig.fusion_rows` ``'batch'`` runs the row-wise fusion step
  (step 8) in :meth:`MambaRec.loss` only on the rows the loss reads; ``'all'`` on
  every node and then indexes.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, LayerNorm, Linear

from ..config import ConfigError, MambaRecConfig
from ..data.graphs import item_item_graph, normalized_adjacency
from ..data.mmrec import UI
from ..nn.conv import (LightGCNPropagation, WeightedPropagation, sparse_propagate,
                       transpose_sparse)
from ..nn.dream import DREAM
from ..nn.losses import bpr_loss, info_nce, mmd_loss
from ..nn.projection import Projection, reduced_width
from ..ranking import ItemLists, rank_items

__all__ = ['MambaRec', 'LossParts', 'MambaRecOutput']


class LossParts(NamedTuple):
    """The loss of one batch and its parts (0-dim tensors)."""

    #: weighted sum; backpropagate this.
    total: Tensor
    bpr: Tensor
    #: the weighted regularisation term (already multiplied by ``reg_weight``).
    reg: Tensor
    #: unweighted InfoNCE (reference: item term + user term).
    cl: Tensor
    #: unweighted MMD (mean over modality pairs).
    mmd: Tensor


class MambaRecOutput(NamedTuple):
    """Everything one forward pass computes (:meth:`MambaRec.encode`)."""

    #: final user embeddings ``[U, d]``.
    user: Tensor
    #: final item embeddings ``[N, d]``.
    item: Tensor
    #: the fused modality side ``[U + N, d]`` (users first).
    side: Tensor
    #: the LightGCN content view ``[U + N, d]``.
    content: Tensor
    #: per modality, the DREAM output :math:`g_m` ``[N, d]`` (before LayerNorm).
    alignment: Dict[str, Tensor]


# ---------------------------------------------------------------------------------
class _Tables(torch.nn.Module):
    """Per-modality raw feature tables: parameters or (frozen) buffers."""

    def __init__(self, tables: Mapping[str, Tensor], trainable: bool):
        super().__init__()
        self.names = tuple(tables)
        for name, x in tables.items():
            if trainable:
                self.register_parameter(name, torch.nn.Parameter(x))
            else:
                self.register_buffer(name, x)

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, name)


class _Graphs(torch.nn.Module):
    """The sparse propagation matrices, as non-persistent buffers (they follow
    ``.to()`` / ``.double()`` and stay out of the state dict)."""

    def set(self, name: str, value: Tensor) -> None:
        self.register_buffer(name, value, persistent=False)

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, name)

    def __deepcopy__(self, memo):
        # Sparse CSR tensors have no storage for the generic deepcopy; clone them.
        new = _Graphs()
        memo[id(self)] = new
        for name, value in self._buffers.items():
            new.set(name, value.clone())
        return new


class _Shared:
    """A read-only reference that copies of the model share (deepcopy returns it
    as is): the data's feature tensors, kept for :meth:`MambaRec.reset_parameters`."""

    def __init__(self, value):
        self.value = value

    def __deepcopy__(self, memo):
        return self


class MambaRec(torch.nn.Module):
    r"""The MambaRec recommender (see the module docstring for the equations).

    Args:
        data (HeteroData): the dataset: ``data['user'].num_nodes``,
            ``data['item'].num_nodes``, ``data.modalities`` and one ``[N, D_m]``
            feature tensor ``data['item'][m]`` per modality (in order; the first plays
            the released "image / v" role, the second "text / t"), and the training
            interactions ``data['user', 'interacts', 'item'].edge_index``.
        config (MambaRecConfig, optional): the model's options.
        cache_dir (str or Path, optional): where the kNN graphs are cached (default:
            :func:`~mambarec_pyg.data.graphs.default_cache_dir`; ``False``: no cache).

    The graphs are built once here, in the default dtype; :meth:`set_graphs` replaces
    them (e.g. with precomputed ones).
    """

    def __init__(self, data, config: Optional[MambaRecConfig] = None,
                 cache_dir=None):
        super().__init__()
        if config is None:
            config = MambaRecConfig()
        if not isinstance(config, MambaRecConfig):
            raise ConfigError(f'MambaRec: expected config to be a MambaRecConfig, got '
                              f'{type(config).__name__}')
        self.config = config
        num_users, num_items, modalities, features, edge_index = _check_data(data)
        # Built on the CPU, then moved to the data's device.
        device = edge_index.device
        edge_index = edge_index.cpu()
        features = {m: x.detach().cpu() for m, x in features.items()}
        self.num_users, self.num_items = num_users, num_items
        self.modalities = modalities
        self.reduced_modalities = _resolve_reduced(config, modalities)
        d = config.embedding_size
        dtype = torch.get_default_dtype()

        self.user_embedding = Embedding(num_users, d)
        self.item_embedding = Embedding(num_items, d)
        # Keep the data's tensors to re-initialise the tables in reset_parameters().
        self._initial_features = _Shared(features)
        self.features = _Tables(
            {m: features[m].to(dtype).clone() for m in modalities},
            trainable=config.trainable_features)

        dims = {m: features[m].size(1) for m in modalities}
        self.projections = torch.nn.ModuleDict()
        self.dreams = torch.nn.ModuleDict() if config.local_alignment else None
        reduced_dims = [dims[m] for m in self.reduced_modalities]
        try:
            d_prime = (reduced_width(reduced_dims, config.reduction_factor)
                       if reduced_dims else None)
            hidden_widths = {m: reduced_width(dims[m], config.reduction_factor)
                             for m in self.reduced_modalities}
        except ValueError as e:
            raise ConfigError(f'model.reduction_factor: {e}') from None
        for m in modalities:
            reduced = m in self.reduced_modalities
            if config.variant == 'reference':
                hidden = hidden_widths[m] if reduced else None
                self.projections[m] = Projection(dims[m], d, hidden,
                                                 fused=config.compose_projection)
                if self.dreams is not None:
                    self.dreams[m] = DREAM(d, d, attention='released')
            else:
                width = d_prime if reduced else d
                if self.dreams is not None:
                    self.projections[m] = Projection(dims[m], width)
                    self.dreams[m] = DREAM(width, d, attention='paper')
                else:
                    self.projections[m] = Projection(
                        dims[m], d, width if reduced else None,
                        fused=config.compose_projection)
        self.norm = LayerNorm(d)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.item_gates = torch.nn.ModuleDict({m: Linear(d, d) for m in modalities})
        if len(modalities) > 1:
            self.query = torch.nn.Sequential(Linear(d, d), torch.nn.Tanh(),
                                             Linear(d, 1, bias=False))
            self.preference_gates = torch.nn.ModuleDict(
                {m: Linear(d, d) for m in modalities})
        else:
            self.query = None
            self.preference_gates = None
        fused = config.propagation == 'fused'
        self.content_view = LightGCNPropagation(config.ui_layers, fused=fused)
        self.item_item_view = WeightedPropagation()

        # Graphs (built once) and the training items (for recommend()).
        self.graphs = _Graphs()
        ui = normalized_adjacency(edge_index, num_users, num_items,
                                  dtype=torch.float64, layout='csr')
        item_graphs = {m: item_item_graph(features[m], config.knn_k,
                                          cache_dir=cache_dir, dtype=torch.float64,
                                          layout='csr') for m in modalities}
        self.set_graphs(ui.adj, ui.r_hat, item_graphs)
        key = torch.unique(edge_index[0].long() * num_items + edge_index[1].long())
        rowptr = torch.zeros(num_users + 1, dtype=torch.long)
        rowptr[1:] = torch.bincount(key // num_items, minlength=num_users).cumsum(0)
        self.register_buffer('train_rowptr', rowptr, persistent=False)
        self.register_buffer('train_items', key % num_items, persistent=False)

        self.reset_parameters()
        if device.type != 'cpu':
            self.to(device)

    # -----------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        r"""Xavier-uniform ID embeddings, feature tables back to the data, PyTorch's
        default initialisation for every layer, BatchNorm statistics cleared."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        with torch.no_grad():
            for m in self.modalities:
                table = self.features[m]
                table.copy_(self._initial_features.value[m].to(table.device))
        layers = [*self.projections.values(), self.norm, *self.item_gates.values()]
        if self.dreams is not None:
            layers += list(self.dreams.values())
        if self.query is not None:
            layers += [self.query[0], self.query[2], *self.preference_gates.values()]
        for layer in layers:
            layer.reset_parameters()

    def set_graphs(self, adj=None, r_hat=None,
                   item_graphs: Optional[Mapping[str, object]] = None) -> None:
        r"""Replace the propagation graphs (dense or sparse tensors or numpy arrays).

        Args:
            adj: normalised user-item adjacency ``[U + N, U + N]`` (users first).
            r_hat: its user-item block ``[U, N]``.
            item_graphs: ``{modality: [N, N]}`` normalised kNN graphs.
        """
        U, N = self.num_users, self.num_items
        dtype = self.user_embedding.weight.dtype
        device = self.user_embedding.weight.device
        todo = []
        if adj is not None:
            todo.append(('adj', adj, (U + N, U + N)))
        if r_hat is not None:
            todo.append(('r_hat', r_hat, (U, N)))
        for m, g in (item_graphs or {}).items():
            if m not in self.modalities:
                raise ValueError(f'set_graphs: unknown modality {m!r}; expected one of '
                                 f'{", ".join(self.modalities)}')
            todo.append((f'item_graph_{m}', g, (N, N)))
        for name, value, shape in todo:
            csr = _as_csr(value, name, shape).to(device=device, dtype=dtype)
            self.graphs.set(name, csr)
            self.graphs.set(name + '_t', transpose_sparse(csr))

    # -----------------------------------------------------------------------------
    @property
    def _double_bn_update(self) -> bool:
        """Whether the released loss would run each DREAM a second time (the MMD
        term of the reference variant)."""
        c = self.config
        return (c.variant == 'reference' and c.local_alignment and c.global_alignment
                and len(self.modalities) > 1)

    @contextlib.contextmanager
    def _bn_updates(self, count: int) -> Iterator[None]:
        """Within the block, each BatchNorm of the DREAMs updates its running
        statistics as if the same batch were seen ``count`` times:
        momentum :math:`1 - (1 - m)^{count}`, ``num_batches_tracked += count``."""
        if count == 1 or self.dreams is None or not self.training:
            yield
            return
        norms = [mod for mod in self.dreams.modules()
                 if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
                 and mod.track_running_stats]
        saved = [mod.momentum for mod in norms]
        if any(mom is None for mom in saved):
            raise RuntimeError('the released double BatchNorm update needs a '
                               'momentum, got momentum=None')
        try:
            for mod in norms:
                mod.momentum = 1.0 - (1.0 - mod.momentum) ** count
            yield
            with torch.no_grad():
                for mod in norms:
                    mod.num_batches_tracked.add_(count - 1)
        finally:
            for mod, mom in zip(norms, saved):
                mod.momentum = mom

    def _modality_items(self, bn_updates: int = 1):
        """Steps 1-5: gated item vectors :math:`e_m` and alignment outputs
        :math:`g_m`, per modality."""
        item = self.item_embedding.weight
        gated, aligned = [], {}
        with self._bn_updates(bn_updates):
            for m in self.modalities:
                f = self.projections[m](self.features[m])
                g = self.dreams[m](f) if self.dreams is not None else f
                aligned[m] = g
                h = self.dropout(self.norm(g))
                gated.append(item * torch.sigmoid(self.item_gates[m](h)))
        return gated, aligned

    def _content(self) -> Tensor:
        """Step 6: the LightGCN content view ``[U + N, d]``."""
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        return self.content_view(x, self.graphs['adj'], self.graphs['adj_t'])

    def _propagate(self, name: str, x: Tensor) -> Tensor:
        if self.config.propagation == 'fused':
            return sparse_propagate(self.graphs[name], x, self.graphs[name + '_t'])
        return self.item_item_view(x, self.graphs[name])

    def _modality_view(self, m: str, e: Tensor):
        """Step 7: ``(users [U, d], items [N, d])`` of the modality view."""
        for _ in range(self.config.ii_layers):
            e = self._propagate(f'item_graph_{m}', e)
        return self._propagate('r_hat', e), e

    def fuse(self, content: Tensor, views: Sequence[Tensor]) -> Tensor:
        r"""Step 8, row-wise: the side embedding from the content view and the
        modality views of the same rows."""
        if len(views) == 1:
            return views[0]
        z = torch.stack(list(views))                       # [M, R, d]
        weight = torch.softmax(self.query(z), dim=0)        # [M, R, 1]
        common = (weight * z).sum(dim=0)
        side = common
        for m, z_m in zip(self.modalities, views):
            prefer = torch.sigmoid(self.preference_gates[m](content))
            side = side + prefer * (z_m - common)
        return side / (len(views) + 1)

    def encode(self, bn_updates: int = 1) -> MambaRecOutput:
        """The full forward pass in the current mode, with its intermediate
        outputs."""
        gated, aligned = self._modality_items(bn_updates)
        content = self._content()
        views = []
        for m, e in zip(self.modalities, gated):
            user, item = self._modality_view(m, e)
            views.append(torch.cat([user, item]))
        side = self.fuse(content, views)
        final = content + side
        user, item = final.split([self.num_users, self.num_items])
        return MambaRecOutput(user, item, side, content, aligned)

    def forward(self, data=None):
        """Final embeddings ``(user [U, d], item [N, d])`` in the current mode.

        ``data`` is accepted for the common ``model(data)`` interface; the graphs
        were built from it at construction, so it must have the same numbers of
        users and items.
        """
        if data is not None:
            _check_same_size(self, data)
        out = self.encode()
        return out.user, out.item

    # -----------------------------------------------------------------------------
    def loss(self, users: Tensor, pos: Tensor, neg: Tensor,
             batch_size: Optional[int] = None,
             cl_weight: Optional[float] = None) -> LossParts:
        r"""The training loss of a batch of ``(user, positive, negative)`` triples,
        from one forward pass in the current mode (train mode for training).

        Args:
            users, pos, neg: ``LongTensor [B]`` each.
            batch_size: the denominator of the regularisation term (the configured
                batch size, also for a short last batch; default ``B``).
            cl_weight: overrides :attr:`MambaRecConfig.cl_weight` for this call.
        """
        users, pos, neg = _check_batch(users, pos, neg, self.num_users,
                                       self.num_items, self.user_embedding.weight.device)
        c = self.config
        B = users.numel()
        batch_size = B if batch_size is None else int(batch_size)
        cl_weight = c.cl_weight if cl_weight is None else float(cl_weight)
        U = self.num_users
        mmd_active = c.global_alignment and len(self.modalities) > 1

        gated, aligned = self._modality_items(
            2 if self._double_bn_update and self.training else 1)
        content = self._content()
        items = torch.cat([pos, neg])
        if c.fusion_rows == 'batch':
            nodes = torch.cat([users, items + U])
            views = []
            for m, e in zip(self.modalities, gated):
                user_m, item_m = self._modality_view(m, e)
                views.append(torch.cat([user_m[users], item_m[items]]))
            content_r = content[nodes]
            side_r = self.fuse(content_r, views)
        else:
            views = []
            for m, e in zip(self.modalities, gated):
                views.append(torch.cat(self._modality_view(m, e)))
            side = self.fuse(content, views)
            nodes = torch.cat([users, items + U])
            content_r, side_r = content[nodes], side[nodes]
        final = content_r + side_r
        e_u, e_i, e_j = final.split([B, B, B])

        bpr = bpr_loss((e_u * e_i).sum(dim=1), (e_u * e_j).sum(dim=1))
        reg = c.reg_weight * (e_u.square().sum() + e_i.square().sum() +
                              e_j.square().sum()) / 2 / batch_size
        zero = final.new_zeros(())
        total = bpr + reg

        cl = zero
        if c.global_alignment:
            with torch.set_grad_enabled(torch.is_grad_enabled() and cl_weight != 0):
                if c.variant == 'reference':
                    cl = (info_nce(side_r[B:2 * B], content_r[B:2 * B],
                                   c.cl_temperature) +
                          info_nce(side_r[:B], content_r[:B], c.cl_temperature))
                elif len(self.modalities) > 1:
                    g = [aligned[m][pos] for m in self.modalities]
                    cl = _pair_mean(lambda a, b: info_nce(a, b, c.cl_temperature), g)
            if cl_weight != 0:
                total = total + cl_weight * cl

        mmd = zero
        if mmd_active:
            with torch.set_grad_enabled(torch.is_grad_enabled() and c.mmd_weight != 0):
                g = [F.normalize(aligned[m][pos], dim=1) for m in self.modalities]
                mmd = _pair_mean(lambda a, b: mmd_loss(a, b, c.mmd_bandwidth), g)
            if c.mmd_weight != 0:
                total = total + c.mmd_weight * mmd
        return LossParts(total, bpr, reg, cl.detach() if cl_weight == 0 else cl,
                         mmd)

    # -----------------------------------------------------------------------------
    @torch.no_grad()
    def recommend(self, users: Tensor, k: int) -> Tensor:
        """Top-``k`` items per user (``LongTensor [len(users), k]``, best first),
        scored in eval mode, each user's training items excluded."""
        users = torch.as_tensor(users, dtype=torch.long,
                                device=self.user_embedding.weight.device).view(-1)
        if users.numel() and (int(users.min()) < 0 or
                              int(users.max()) >= self.num_users):
            raise ValueError(f'recommend: user ids must be in 0..{self.num_users - 1}')
        if not 1 <= k <= self.num_items:
            raise ValueError(f'recommend: expected 1 <= k <= {self.num_items} items, '
                             f'got k={k}')
        was_training = self.training
        self.eval()
        try:
            user_emb, item_emb = self()
        finally:
            self.train(was_training)
        exclude = ItemLists.from_csr(self.train_rowptr, self.train_items)
        return rank_items(user_emb, item_emb, users, k, exclude)[0]

    # -----------------------------------------------------------------------------
    def released_names(self) -> Dict[str, str]:
        """The released implementation's state-dict names mapped to this model's
        (a two-modality reference-variant model with local alignment, the first
        modality in the released "image" role and reduced, the second "text")."""
        c = self.config
        if c.variant != 'reference' or len(self.modalities) != 2 or \
                self.dreams is None or self.reduced_modalities != self.modalities[:1]:
            raise ValueError(
                'released parameters need a reference-variant model with local '
                'alignment and two modalities, the first (released "image") reduced '
                f'and the second ("text") not; got variant={c.variant!r}, modalities='
                f'{self.modalities}, reduced={self.reduced_modalities}, '
                f'local_alignment={c.local_alignment}')
        v, t = self.modalities
        names = {
            'user_embedding.weight': 'user_embedding.weight',
            'item_id_embedding.weight': 'item_embedding.weight',
            'image_embedding.weight': f'features.{v}',
            'text_embedding.weight': f'features.{t}',
            'query_common.0.weight': 'query.0.weight',
            'query_common.0.bias': 'query.0.bias',
            'query_common.2.weight': 'query.2.weight',
        }
        for p in ('weight', 'bias'):
            names[f'norm.{p}'] = f'norm.{p}'
            names[f'image_reduce.{p}'] = f'projections.{v}.reduce.{p}'
            names[f'image_trs.{p}'] = f'projections.{v}.trs.{p}'
            names[f'text_trs.{p}'] = f'projections.{t}.trs.{p}'
            names[f'gate_v.0.{p}'] = f'item_gates.{v}.{p}'
            names[f'gate_t.0.{p}'] = f'item_gates.{t}.{p}'
            names[f'gate_image_prefer.0.{p}'] = f'preference_gates.{v}.{p}'
            names[f'gate_text_prefer.0.{p}'] = f'preference_gates.{t}.{p}'
        # DREAM keeps the released names below its prefix.
        for m, released in ((v, 'image'), (t, 'text')):
            for key in self.dreams[m].state_dict():
                names[f'dream_{released}.{key}'] = f'dreams.{m}.{key}'
        return names

    def released_state_dict(self, grads: bool = False) -> Dict[str, Tensor]:
        """This model's state under the released names (see :meth:`released_names`);
        ``grads=True``: the gradients of the trainable entries instead."""
        own = dict(self.named_parameters()) if grads else self.state_dict()
        out = {}
        for released, name in self.released_names().items():
            if name in own:
                value = own[name].grad if grads else own[name]
                if value is not None:
                    out[released] = value.detach()
        return out

    def load_released_state_dict(self, state_dict: Mapping[str, object]) -> None:
        """Load the authors' released parameters and BatchNorm statistics, keyed by
        their names (values: numpy arrays or tensors).

        Raises:
            ValueError: one error listing every missing, unexpected or mis-shaped
                entry (name, expected shape, given shape), before anything is changed.
        """
        names = self.released_names()
        own = self.state_dict()
        problems: List[str] = []
        new = {}
        for key, value in state_dict.items():
            if key not in names:
                problems.append(f'unexpected: {key}')
                continue
            tensor = value if isinstance(value, Tensor) else torch.as_tensor(
                np.asarray(value))
            expected = tuple(own[names[key]].shape)
            if tuple(tensor.shape) != expected:
                problems.append(f'mis-shaped: {key}: expected {expected}, got '
                                f'{tuple(tensor.shape)}')
                continue
            new[names[key]] = tensor
        for key, name in names.items():
            if key not in state_dict:
                problems.append(f'missing: {key} (expected shape '
                                f'{tuple(own[name].shape)})')
        if problems:
            raise ValueError(f'load_released_state_dict: {len(problems)} entries do '
                             f'not match this model:\n  ' + '\n  '.join(problems))
        with torch.no_grad():
            for name, value in new.items():
                own[name].copy_(value)


# ---------------------------------------------------------------------------------
def _pair_mean(fn, xs: Sequence[Tensor]) -> Tensor:
    pairs = list(itertools.combinations(xs, 2))
    total = fn(*pairs[0])
    for a, b in pairs[1:]:
        total = total + fn(a, b)
    return total / len(pairs) if len(pairs) > 1 else total


def _as_csr(value, name: str, shape) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    try:
        from torch_geometric.typing import SparseTensor
        if isinstance(value, SparseTensor):
            value = value.to_torch_sparse_csr_tensor()
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(value, Tensor):
        raise ValueError(f'set_graphs: {name}: expected a tensor or numpy array, got '
                         f'{type(value).__name__}')
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f'set_graphs: {name}: expected shape {tuple(shape)}, got '
                         f'{tuple(value.shape)}')
    if value.layout == torch.strided:
        value = value.to_sparse_csr()
    elif value.layout == torch.sparse_coo:
        value = value.coalesce().to_sparse_csr()
    elif value.layout != torch.sparse_csr:
        value = value.to_sparse_csr()
    return value


def _check_data(data):
    try:
        num_users = int(data['user'].num_nodes)
        num_items = int(data['item'].num_nodes)
    except (KeyError, AttributeError, TypeError):
        raise ValueError("MambaRec: expected data['user'].num_nodes and "
                         "data['item'].num_nodes") from None
    modalities = tuple(getattr(data, 'modalities', None) or ())
    if not modalities:
        raise ValueError('MambaRec: data.modalities is empty; expected at least one '
                         'item modality (data[\'item\'][m] = [N, D_m])')
    features = {}
    for m in modalities:
        if not m.isidentifier():
            raise ValueError(f'MambaRec: modality name {m!r} must be a Python '
                             f'identifier')
        x = data['item'].get(m) if hasattr(data['item'], 'get') else None
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != num_items:
            shape = tuple(x.shape) if isinstance(x, Tensor) else None
            raise ValueError(f"MambaRec: data['item'][{m!r}]: expected a tensor "
                             f"[{num_items}, D], got {shape or type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"MambaRec: data['item'][{m!r}]: expected floats, got "
                             f"{x.dtype}")
        features[m] = x
    try:
        edge_index = data[UI].edge_index
    except (KeyError, AttributeError):
        raise ValueError("MambaRec: expected training interactions "
                         "data['user', 'interacts', 'item'].edge_index") from None
    return num_users, num_items, modalities, features, edge_index


def _resolve_reduced(config: MambaRecConfig, modalities):
    if config.reduced_modalities is None:
        if config.variant == 'paper':
            return tuple(modalities)
        return ('image', ) if 'image' in modalities else ()
    unknown = [m for m in config.reduced_modalities if m not in modalities]
    if unknown:
        raise ConfigError(f'model.reduced_modalities: unknown modality '
                          f'{", ".join(map(repr, unknown))}; valid: '
                          f'{", ".join(map(repr, modalities))}')
    return tuple(m for m in modalities if m in config.reduced_modalities)


def _check_batch(users, pos, neg, num_users, num_items, device):
    out = []
    for name, t, n in (('users', users, num_users), ('pos', pos, num_items),
                       ('neg', neg, num_items)):
        t = torch.as_tensor(t, device=device)
        if t.dim() != 1 or t.is_floating_point():
            raise ValueError(f'loss: expected {name} as a 1-D integer tensor, got '
                             f'{tuple(t.shape)} {t.dtype}')
        t = t.long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ValueError(f'loss: {name} ids must be in 0..{n - 1}')
        out.append(t)
    if not out[0].numel() or not (out[0].shape == out[1].shape == out[2].shape):
        raise ValueError(f'loss: expected users, pos and neg of the same non-zero '
                         f'length, got {[t.numel() for t in out]}')
    return out


def _check_same_size(model: MambaRec, data) -> None:
    try:
        u, n = int(data['user'].num_nodes), int(data['item'].num_nodes)
    except (KeyError, AttributeError, TypeError):
        return
    if (u, n) != (model.num_users, model.num_items):
        raise ValueError(f'MambaRec: built for {model.num_users} users and '
                         f'{model.num_items} items, got data with {u} and {n}')
