r"""The multi-view encoder that MGCN (`"Multi-View Graph Convolutional Network for
Multimedia Recommendation" <https://arxiv.org/abs/2308.03588>`_, ACM MM 2023) and
MambaRec (CIKM 2025), which is built on it, share: :class:`MultiViewRecommender`.

A model of the family fixes its structure with a :class:`MultiViewSpec` (its
:meth:`~MultiViewRecommender._spec` maps the model's config to one) and inherits the
encoder, the loss and the graphs:

1. raw feature tables :math:`\mathbf{X}_m` (trainable or frozen);
2. projection :math:`f_m` (:class:`~mambarec_pyg.nn.Projection`, one or two
   affine stages);
3. optional local alignment :math:`g_m = \mathrm{DREAM}_m(f_m)`
   (:class:`~mambarec_pyg.nn.DREAM`);
4. optional shared LayerNorm and dropout, :math:`h_m`;
5. gated item vectors :math:`e_m = \mathbf{E}_{\mathrm{item}} \odot
   \sigma(\mathrm{Lin}_m(h_m))`;
6. content view :math:`c`: the LightGCN layer mean on the normalised user-item graph;
7. modality views :math:`z_m = [\hat{\mathbf{R}} \mathbf{S}_m^{L'} e_m;
   \mathbf{S}_m^{L'} e_m]` on the item-item kNN graphs;
8. the behaviour-aware fusion (:class:`~mambarec_pyg.nn.ModalityFusion`);
9. final embeddings :math:`c + \mathrm{side}`;

and the loss BPR + L2 on the batch's final embeddings + InfoNCE (+ MMD). The
equations and the implementation notes are in :mod:`mambarec_pyg.models.mambarec`
(MambaRec) and :mod:`mambarec_pyg.models.mgcn` (MGCN).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import (Any, Dict, Iterator, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, LayerNorm, Linear

from ..config import ConfigError, ModelConfig
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..data.transforms import ItemKNN, UserItemNorm
from ..nn.conv import LightGCNPropagation, WeightedPropagation
from ..nn.dream import DREAM
from ..nn.fusion import ModalityFusion
from ..nn.losses import bpr_loss, info_nce, mmd_loss
from ..nn.projection import Projection, reduced_width
from .base import Recommender, SparseGraphs, as_csr, edge_matrix, user_item_matrices

__all__ = ['MultiViewRecommender', 'MultiViewSpec', 'MultiViewOutput']


class MultiViewSpec(NamedTuple):
    """The structure of a multi-view model of this family (MambaRec or MGCN)."""

    variant: str
    embedding_size: int
    ui_layers: int
    ii_layers: int
    knn_k: int
    reduction_factor: int
    reduced_modalities: Optional[Tuple[str, ...]]
    dream: bool
    layer_norm: bool
    dropout: float
    trainable_features: bool
    reg_weight: float
    cl: bool
    cl_weight: float
    cl_temperature: float
    cl_warmup_epochs: int
    mmd: bool
    #: whether the loss reports an ``'mmd'`` part (0 while ``mmd`` is off)
    mmd_term: bool
    mmd_weight: float
    mmd_bandwidth: Union[float, Tuple[float, ...]]
    propagation: str
    fusion_rows: str
    compose_projection: bool


class MultiViewOutput(NamedTuple):
    """Everything one forward pass computes (:meth:`MultiViewRecommender.encode`)."""

    #: final user embeddings ``[U, d]``.
    user: Tensor
    #: final item embeddings ``[N, d]``.
    item: Tensor
    #: the fused modality side ``[U + N, d]`` (users first).
    side: Tensor
    #: the LightGCN content view ``[U + N, d]``.
    content: Tensor
    #: per modality, the alignment output :math:`g_m` ``[N, d]`` (DREAM's, before
    #: LayerNorm; the projection's without local alignment).
    alignment: Dict[str, Tensor]



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


class _Shared:
    """A read-only reference that copies of the model share (deepcopy returns it
    as is): the data's feature tensors, kept for :meth:`MultiViewRecommender.reset_parameters`."""

    def __init__(self, value):
        self.value = value

    def __deepcopy__(self, memo):
        return self

class MultiViewRecommender(Recommender):
    r"""The encoder, loss and graphs of MGCN and MambaRec (see the module docstring);
    not registered itself. Subclasses set ``config_class`` and implement
    :meth:`_spec`.

    Args:
        data (HeteroData): the dataset: ``data['user'].num_nodes``,
            ``data['item'].num_nodes``, ``data.modalities`` and one ``[N, D_m]``
            feature tensor ``data['item'][m]`` per modality, the training
            interactions ``data['user', 'interacts', 'item'].edge_index``, and the
            graphs of :meth:`graph_transforms` (computed when missing).
        config (ModelConfig, optional): the model's options.

    :meth:`set_graphs` replaces the graphs (e.g. with precomputed ones).
    """

    min_modalities = 1

    @classmethod
    def _spec(cls, config) -> MultiViewSpec:
        """The structure of the model under ``config``."""
        raise NotImplementedError

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm(), ItemKNN(cls._spec(config).knn_k, 'similarity')]

    def __init__(self, data, config: Optional[ModelConfig] = None):
        super().__init__(data, config)
        spec = self.spec = self._spec(self.config)
        data = self.prepare(data, self.config)
        modalities = self.modalities
        features = {m: data['item'][m].detach().cpu() for m in modalities}
        device = data[UI].edge_index.device
        self.reduced_modalities = _resolve_reduced(spec, modalities)
        d = spec.embedding_size
        dtype = torch.get_default_dtype()

        self.user_embedding = Embedding(self.num_users, d)
        self.item_embedding = Embedding(self.num_items, d)
        # Keep the data's tensors to re-initialise the tables in reset_parameters().
        self._initial_features = _Shared(features)
        self.features = _Tables(
            {m: features[m].to(dtype).clone() if spec.trainable_features
             else features[m].to(dtype) for m in modalities},
            trainable=spec.trainable_features)

        dims = {m: features[m].size(1) for m in modalities}
        self.projections = torch.nn.ModuleDict()
        self.dreams = torch.nn.ModuleDict() if spec.dream else None
        reduced_dims = [dims[m] for m in self.reduced_modalities]
        try:
            d_prime = (reduced_width(reduced_dims, spec.reduction_factor)
                       if reduced_dims else None)
            hidden_widths = {m: reduced_width(dims[m], spec.reduction_factor)
                             for m in self.reduced_modalities}
        except ValueError as e:
            raise ConfigError(f'model.reduction_factor: {e}') from None
        for m in modalities:
            reduced = m in self.reduced_modalities
            if spec.variant == 'reference':
                hidden = hidden_widths[m] if reduced else None
                self.projections[m] = Projection(dims[m], d, hidden,
                                                 fused=spec.compose_projection)
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
                        fused=spec.compose_projection)
        self.norm = LayerNorm(d) if spec.layer_norm else None
        self.dropout = torch.nn.Dropout(spec.dropout)
        self.item_gates = torch.nn.ModuleDict({m: Linear(d, d) for m in modalities})
        self.fusion = ModalityFusion(d, modalities)
        fused = spec.propagation == 'fused'
        self.content_view = LightGCNPropagation(spec.ui_layers, fused=fused)
        self.item_item_view = WeightedPropagation(fused=fused)
        self.cl_weight_now = spec.cl_weight

        # The graphs, from the data (float64 weights, cast to the model's dtype).
        self.graphs = SparseGraphs()
        adj, r_hat = user_item_matrices(data, torch.float64)
        knn = ItemKNN(spec.knn_k, 'similarity')
        item_graphs = {m: edge_matrix(data, knn.edge_type(m), torch.float64)
                       for m in modalities}
        self.set_graphs(adj, r_hat, item_graphs)

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
        # (This order fixes the random draws of a seeded initialisation.)
        layers = [*self.projections.values()]
        if self.norm is not None:
            layers.append(self.norm)
        layers += list(self.item_gates.values())
        if self.dreams is not None:
            layers += list(self.dreams.values())
        for layer in [*layers, self.fusion]:
            layer.reset_parameters()

    def set_graphs(self, adj=None, r_hat=None,
                   item_graphs: Optional[Mapping[str, object]] = None) -> None:
        r"""Replace the propagation graphs (dense or sparse tensors or numpy arrays).

        Args:
            adj: normalised user-item adjacency ``[U + N, U + N]`` (users first).
            r_hat: its user-item block ``[U, N]``.
            item_graphs: ``{modality: [N, N]}`` normalised kNN graphs (rows are the
                items that aggregate).
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
            csr = as_csr(value, f'set_graphs: {name}', shape).to(device=device,
                                                                 dtype=dtype)
            self.graphs.set(name, csr)

    # -----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> Optional[Dict[str, Any]]:
        """The InfoNCE warm-up: weight 0 during the first ``cl_warmup_epochs``."""
        spec = self.spec
        if not spec.cl:
            return None
        warm = epoch < spec.cl_warmup_epochs
        self.cl_weight_now = 0.0 if warm else spec.cl_weight
        return {'cl_weight': self.cl_weight_now} if spec.cl_warmup_epochs else None

    def diagnose(self, history: Sequence[Dict[str, Any]]) -> List[str]:
        """A run whose BPR loss never left ln 2 (within 0.01, moving less than 0.005)
        and whose validation metric never improved after the first epoch learned no
        ranking (with the released weights InfoNCE can hold it there;
        docs/reference.md §8)."""
        bpr = [r['loss']['bpr'] for r in history if 'bpr' in (r.get('loss') or {})]
        # near chance (ln 2, the loss of all-equal scores), not moving, and no
        # validation improvement after the first epoch
        if len(bpr) < 3 or any(abs(b - math.log(2)) > 0.01 for b in bpr) or \
                max(bpr) - min(bpr) > 0.005 or any(r.get('best') for r in history[1:]):
            return []
        hint = ('raise --model.cl-warmup-epochs (e.g. 10) to hold the InfoNCE weight '
                'at 0 while BPR starts to learn' if self.spec.cl and
                self.spec.cl_weight > 0 else 'check the learning rate and the data')
        return [f'the BPR loss stayed at ln 2 = 0.693 (chance) for all {len(bpr)} '
                f'epochs ({min(bpr):.4f}-{max(bpr):.4f}): the model learned no ranking, '
                f'and its metrics may be below most-popular; {hint}']

    # -----------------------------------------------------------------------------
    @property
    def _double_bn_update(self) -> bool:
        """Whether the released loss would run each DREAM a second time (the MMD
        term of the reference variant)."""
        s = self.spec
        return (s.variant == 'reference' and s.dream and s.mmd
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
                h = self.norm(g) if self.norm is not None else g
                h = self.dropout(h)
                gated.append(item * torch.sigmoid(self.item_gates[m](h)))
        return gated, aligned

    def _content(self) -> Tensor:
        """Step 6: the LightGCN content view ``[U + N, d]``."""
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        return self.content_view(x, self.graphs['adj'])

    def _propagate(self, name: str, x: Tensor) -> Tensor:
        return self.item_item_view(x, self.graphs[name],
                                   transpose=self.graphs[name + '_t'])

    def _modality_view(self, m: str, e: Tensor):
        """Step 7: ``(users [U, d], items [N, d])`` of the modality view."""
        for _ in range(self.spec.ii_layers):
            e = self._propagate(f'item_graph_{m}', e)
        return self._propagate('r_hat', e), e

    def fuse(self, content: Tensor, views: Sequence[Tensor]) -> Tensor:
        r"""Step 8, row-wise: the side embedding from the content view and the
        modality views of the same rows (:class:`~mambarec_pyg.nn.ModalityFusion`)."""
        return self.fusion(content, views)

    def encode(self, bn_updates: int = 1) -> MultiViewOutput:
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
        return MultiViewOutput(user, item, side, content, aligned)

    def embed(self) -> Tuple[Tensor, Tensor]:
        """Final embeddings ``(user [U, d], item [N, d])`` in the current mode."""
        out = self.encode()
        return out.user, out.item

    # -----------------------------------------------------------------------------
    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        r"""The training loss of a batch of ``(user, positive, negative)`` triples,
        from one forward pass in the current mode (train mode for training).

        ``batch.size`` is the denominator of the regularisation term (the configured
        batch size, also for a short last batch). The InfoNCE weight is the one in
        force (:meth:`on_epoch_start`). Ids are not checked here (the sampler makes
        valid batches; checking would synchronise the device every step).

        Returns ``{'total', 'bpr', 'reg', 'cl', 'mmd'}`` (``'mmd'`` only for models
        with an MMD term): ``reg`` weighted, ``cl`` and ``mmd`` unweighted.
        """
        s = self.spec
        users, pos, neg = batch.users, batch.pos, batch.neg
        B = users.numel()
        batch_size = batch.nominal_size
        cl_weight = self.cl_weight_now
        U = self.num_users
        mmd_active = s.mmd and len(self.modalities) > 1

        gated, aligned = self._modality_items(
            2 if self._double_bn_update and self.training else 1)
        content = self._content()
        items = torch.cat([pos, neg])
        nodes = torch.cat([users, items + U])
        if s.fusion_rows == 'batch':
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
            content_r, side_r = content[nodes], side[nodes]
        final = content_r + side_r
        e_u, e_i, e_j = final.split([B, B, B])

        bpr = bpr_loss((e_u * e_i).sum(dim=1), (e_u * e_j).sum(dim=1), batch)
        reg = s.reg_weight * (batch.sum(e_u.square()) + batch.sum(e_i.square()) +
                              batch.sum(e_j.square())) / 2 / batch_size
        zero = final.new_zeros(())
        total = bpr + reg

        # The rows of the terms that couple the batch (InfoNCE, MMD): this batch's,
        # or on one process's slice of a global batch the whole batch's, gathered
        # once (every process then computes these terms on the global batch).
        cl_reference = s.cl and s.variant == 'reference'
        pos_aligned = (s.cl and not cl_reference and len(self.modalities) > 1) or \
            mmd_active
        side_u, side_i = side_r[:B], side_r[B:2 * B]
        content_u, content_i = content_r[:B], content_r[B:2 * B]
        g_pos = None
        if batch.shard is not None:
            cols = ([side_u, side_i, content_u, content_i] if cl_reference else []) + \
                ([aligned[m][pos] for m in self.modalities] if pos_aligned else [])
            if cols:
                rows = batch.gather(torch.cat(cols, dim=1)).split(
                    [c.size(1) for c in cols], dim=1)
                if cl_reference:
                    side_u, side_i, content_u, content_i = rows[:4]
                if pos_aligned:
                    g_pos = list(rows[4 if cl_reference else 0:])

        cl = zero
        if s.cl:
            with torch.set_grad_enabled(torch.is_grad_enabled() and cl_weight != 0):
                if s.variant == 'reference':
                    cl = (info_nce(side_i, content_i, s.cl_temperature) +
                          info_nce(side_u, content_u, s.cl_temperature))
                elif len(self.modalities) > 1:
                    g = g_pos if g_pos is not None else \
                        [aligned[m][pos] for m in self.modalities]
                    cl = _pair_mean(lambda a, b: info_nce(a, b, s.cl_temperature), g)
            if cl_weight != 0:
                total = total + cl_weight * cl
        parts = {'total': total, 'bpr': bpr, 'reg': reg,
                 'cl': cl.detach() if cl_weight == 0 else cl}

        if s.mmd_term:
            mmd = zero
            if mmd_active:
                with torch.set_grad_enabled(torch.is_grad_enabled() and
                                            s.mmd_weight != 0):
                    g = [F.normalize(x, dim=1) for x in (
                        g_pos if g_pos is not None else
                        [aligned[m][pos] for m in self.modalities])]
                    mmd = _pair_mean(lambda a, b: mmd_loss(a, b, s.mmd_bandwidth), g)
                if s.mmd_weight != 0:
                    total = total + s.mmd_weight * mmd
                    parts['total'] = total
            parts['mmd'] = mmd
        return parts


# ---------------------------------------------------------------------------------
def _pair_mean(fn, xs: Sequence[Tensor]) -> Tensor:
    pairs = list(itertools.combinations(xs, 2))
    total = fn(*pairs[0])
    for a, b in pairs[1:]:
        total = total + fn(a, b)
    return total / len(pairs) if len(pairs) > 1 else total


def _resolve_reduced(spec: MultiViewSpec, modalities):
    if spec.reduced_modalities is None:
        if spec.variant == 'paper':
            return tuple(modalities)
        return ('image', ) if 'image' in modalities else ()
    unknown = [m for m in spec.reduced_modalities if m not in modalities]
    if unknown:
        raise ConfigError(f'model.reduced_modalities: unknown modality '
                          f'{", ".join(map(repr, unknown))}; valid: '
                          f'{", ".join(map(repr, modalities))}')
    return tuple(m for m in modalities if m in spec.reduced_modalities)
