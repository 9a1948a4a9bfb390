r"""Graphs on the data: PyG transforms that add the derived graphs as edge types.

Every model that propagates on a graph finds it on the
:class:`~torch_geometric.data.HeteroData`, where it can be inspected, saved, swapped
or shared between models:

* :class:`UserItemNorm` -- the LightGCN weights :math:`1/\sqrt{d_u d_i}` of the
  training edges, as ``data['user', 'interacts', 'item'].edge_weight`` (the
  normalised user-item graph of LightGCN, MGCN, FREEDOM, BM3, LGMRec, SLMRec and
  MambaRec);
* :class:`ItemKNN` -- per modality, the normalised k-nearest-neighbour item-item
  graph of the raw features, as the edge type ``('item', knn_relation(m, k,
  weighting), 'item')`` with ``edge_index`` (neighbour -> item) and ``edge_weight``.
  The weighting rule is a parameter: cosine-similarity weights (MambaRec, MGCN) or
  binary ones (FREEDOM);
* :class:`UserCooccurrence` -- each user's top-:math:`k` co-occurring users in the
  **training** interactions, as the edge type ``('user', cooccurrence_relation(k),
  'user')`` with ``edge_index`` (neighbour -> user) and ``edge_weight`` (the number
  of shared items): the user-user graph of DualGNN and DRAGON;
* :class:`PrincipalGraph` -- PGL's global principal graph, a low-rank rebuild of the
  normalised user-item adjacency from the training interactions, as four edge types
  ``(src, principal_relation(rank), dst)`` (user and item blocks);
* :class:`ItemCooccurrence` -- each item's top-:math:`k` co-occurring items in the
  training interactions (DA-MRS's behaviour graph); :class:`DenoisedItemKNN` --
  DA-MRS's kNN graphs on the item pairs similar in every modality.

A transform returns a shallow copy of the data with the new edge types (the input is
not modified) and does nothing when they are already there. Weights are stored in
float64, as computed (each model casts them to its own dtype), so a float64 model
propagates on exactly the graph the formulas define.

:func:`apply_transforms` caches what the transforms compute the way a PyG dataset
caches its processed files: in the dataset's ``processed/`` directory, one file per
transform, keyed by the sha256 of the transform's arguments and of the content of the
tensors it reads (features, training edges). A changed feature file therefore never
reuses a stale graph. Files are written atomically and read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import hashlib
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform

from ..io import atomic_path
from ..utils import cached_on, tensor_fingerprint
from .errors import DataError
from .graphs import (WEIGHTINGS, denoised_knn_edges, knn_edges,
                     principal_graph_edges, sparse_from_edges, user_cooccurrence_edges,
                     user_item_weights)
from .index import UI, training_index
from .knn import KNNBackend

__all__ = ['GraphTransform', 'UserItemNorm', 'ItemKNN', 'UserCooccurrence',
           'PrincipalGraph', 'principal_relation', 'ItemCooccurrence',
           'DenoisedItemKNN', 'denoised_knn_relation',
           'apply_transforms', 'knn_relation', 'cooccurrence_relation', 'content_hash']

EdgeType = Tuple[str, str, str]
PathLike = Union[str, os.PathLike]

# Bumped whenever a graph construction changes, so old processed files are not reused.
_VERSION = 2


def knn_relation(modality: str, k: int = 10, weighting: str = 'similarity') -> str:
    """The relation name of a kNN graph: ``knn10_image``, ``knn10_text_binary``."""
    return f'knn{k}_{modality}' + ('' if weighting == 'similarity' else f'_{weighting}')


def cooccurrence_relation(k: int = 40) -> str:
    """The relation name of a user co-occurrence graph: ``cooccur40``."""
    return f'cooccur{k}'


def denoised_knn_relation(modality: str, k: int = 10) -> str:
    """The relation name of a denoised kNN graph (DA-MRS): ``dknn10_image``."""
    return f'dknn{k}_{modality}'


def principal_relation(rank: int = 64) -> str:
    """The relation name of PGL's principal graph: ``principal64``."""
    return f'principal{rank}'


#: The ``(source, target)`` node types of the blocks of :class:`PrincipalGraph`.
PRINCIPAL_BLOCKS = (('user', 'item'), ('item', 'user'), ('user', 'user'),
                    ('item', 'item'))


def content_hash(t: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (memoised while unchanged)."""
    def build() -> str:
        h = hashlib.sha256(f'{t.dtype}|{tuple(t.shape)}|'.encode())
        x = t.detach().to('cpu').contiguous()
        h.update(memoryview(x.view(torch.uint8).reshape(-1).numpy()))
        return h.hexdigest()
    return cached_on(t, 'sha256', build, tensor_fingerprint(t))


class GraphTransform(BaseTransform):
    """A transform that stores derived graphs on the data.

    Subclasses implement :meth:`outputs` (what they write, as ``(edge type,
    attribute)`` pairs), :meth:`inputs` (the tensors the result depends on, for the
    cache key) and :meth:`compute` (the new attributes).
    """

    def outputs(self, data) -> List[Tuple[EdgeType, str]]:
        raise NotImplementedError

    def inputs(self, data) -> List[Tensor]:
        raise NotImplementedError

    def compute(self, data) -> Dict[EdgeType, Dict[str, Tensor]]:
        raise NotImplementedError

    def present(self, data) -> bool:
        """Whether every output is already on the data."""
        for edge_type, attr in self.outputs(data):
            if edge_type not in data.edge_types or attr not in data[edge_type]:
                return False
        return True

    def cache_key(self, data) -> str:
        h = hashlib.sha256(f'v{_VERSION}|{self!r}|'.encode())
        for t in self.inputs(data):
            h.update(content_hash(t).encode())
        return h.hexdigest()

    def forward(self, data):
        # (BaseTransform.__call__ has made a shallow copy already.)
        if self.present(data):
            return data
        return attach(data, self.compute(data), copy_data=False)


def attach(data, graphs: Dict[EdgeType, Dict[str, Tensor]], copy_data: bool = True):
    """``data`` (a shallow copy unless ``copy_data=False``) with the attributes
    ``graphs`` added."""
    out = copy.copy(data) if copy_data else data
    for edge_type, attrs in graphs.items():
        store = out[edge_type]
        for name, value in attrs.items():
            store[name] = value
    return out


class UserItemNorm(GraphTransform):
    r"""The LightGCN-normalised user-item graph as weights of the training edges.

    Stores ``data['user', 'interacts', 'item'].edge_weight`` :math:`= 1/\sqrt{d_u d_i}`
    (degrees over distinct training pairs, from the dataset's shared
    :func:`~mambarec_pyg.data.index.training_index`;
    :func:`~.graphs.user_item_weights`), so
    :math:`\hat{\mathbf{R}}` and the symmetric adjacency
    :math:`\mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}` are the training edges with
    these weights (:func:`~.graphs.normalized_adjacency`). MMRec's models add 1e-7 (or
    1e-8) to the degrees, MGCN's and MambaRec's nothing: for degrees of at least 1
    the difference is below float32 resolution, so one rule serves all.
    """

    def outputs(self, data):
        return [(UI, 'edge_weight')]

    def inputs(self, data):
        return [data[UI].edge_index]

    def present(self, data) -> bool:
        if not super().present(data):
            return False
        store = data[UI]
        return store.edge_weight.numel() == store.edge_index.size(1)

    def compute(self, data):
        store = data[UI]
        w = user_item_weights(store.edge_index, int(data['user'].num_nodes),
                              int(data['item'].num_nodes), training_index(data))
        return {UI: {'edge_weight': w}}

    def __repr__(self) -> str:
        return 'UserItemNorm()'


class ItemKNN(GraphTransform):
    r"""Per modality, the normalised kNN item-item graph of the raw features
    (:func:`~mambarec_pyg.data.graphs.item_item_graph` gives the definition).

    Stores ``data['item', knn_relation(m, k, weighting), 'item']`` with
    ``edge_index`` ``[2, N k]`` (row 0 the neighbour :math:`j`, row 1 the item
    :math:`i` that aggregates it) and ``edge_weight`` :math:`\mathbf{S}_{ij}`.

    Args:
        k (int): neighbours per item, itself included. (default: ``10``)
        weighting (str): ``'similarity'`` (MambaRec, MGCN) or ``'binary'``
            (FREEDOM). (default: ``'similarity'``)
        modalities (sequence of str, optional): which modalities (default: all of
            ``data.modalities``).
        backend (KNNBackend or str, optional): how the neighbours are searched
            (:mod:`mambarec_pyg.data.knn`). ``None`` (default): the data's
            ``knn_backend`` (set by :func:`~mambarec_pyg.data.load_dataset` from
            ``data.knn_backend`` and its parameters), else exact. The graph's
            relation name does not depend on it (models find the graph the same
            way); the cache key does, for every backend but ``exact``.
    """

    def __init__(self, k: int = 10, weighting: str = 'similarity',
                 modalities: Optional[Sequence[str]] = None,
                 backend: Union[None, str, KNNBackend] = None) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"ItemKNN: weighting: expected one of "
                             f"{', '.join(map(repr, WEIGHTINGS))}, got {weighting!r}")
        self.k = int(k)
        self.weighting = weighting
        self.modalities = None if modalities is None else tuple(modalities)
        self.backend = KNNBackend(backend) if isinstance(backend, str) else backend

    def knn_backend(self, data) -> KNNBackend:
        """The backend used on ``data`` (this transform's, else the data's, else
        exact)."""
        backend = self.backend or getattr(data, 'knn_backend', None)
        return backend if isinstance(backend, KNNBackend) else KNNBackend()

    def cache_key(self, data) -> str:
        key = super().cache_key(data)
        backend = self.knn_backend(data)
        if backend.exact:  # as before backends existed: old caches stay valid
            return key
        return hashlib.sha256(f'{key}|knn={backend.key()}'.encode()).hexdigest()

    def _modalities(self, data) -> Tuple[str, ...]:
        available = tuple(getattr(data, 'modalities', None) or ())
        if self.modalities is None:
            return available
        missing = [m for m in self.modalities if m not in available]
        if missing:
            raise DataError(f'ItemKNN: modality {missing[0]!r} is not on the data '
                            f'(available: {", ".join(available) or "none"})')
        return self.modalities

    def relation(self, modality: str) -> str:
        return knn_relation(modality, self.k, self.weighting)

    def edge_type(self, modality: str) -> EdgeType:
        return ('item', self.relation(modality), 'item')

    def outputs(self, data):
        return [(self.edge_type(m), a) for m in self._modalities(data)
                for a in ('edge_index', 'edge_weight')]

    def inputs(self, data):
        return [data['item'][m] for m in self._modalities(data)]

    def compute(self, data):
        out = {}
        for m in self._modalities(data):
            edge_index, weight = knn_edges(data['item'][m], self.k, self.weighting,
                                           backend=self.knn_backend(data))
            out[self.edge_type(m)] = {'edge_index': edge_index,
                                      'edge_weight': weight}
        return out

    def __repr__(self) -> str:
        mods = '' if self.modalities is None else f', modalities={self.modalities}'
        return f'ItemKNN(k={self.k}, weighting={self.weighting!r}{mods})'


class UserCooccurrence(GraphTransform):
    r"""The user-user co-occurrence graph of the **training** interactions (DualGNN,
    DRAGON; :func:`~mambarec_pyg.data.graphs.user_cooccurrence_edges` gives the
    definition).

    For users :math:`u \ne v` with distinct training items :math:`\mathcal{I}_u,
    \mathcal{I}_v`, :math:`c_{uv} = |\mathcal{I}_u \cap \mathcal{I}_v|`; each user
    keeps the at most :math:`k` users with the largest :math:`c_{uv} > 0` (ties: the
    lower id). Stores ``data['user', cooccurrence_relation(k), 'user']`` with
    ``edge_index`` ``[2, E]`` (row 0 the neighbour :math:`v`, row 1 the user
    :math:`u`; sorted by :math:`u`, then by descending count) and ``edge_weight``
    :math:`c_{uv}` (float64).

    Only ``data['user', 'interacts', 'item'].edge_index`` (the training split) is
    read: validation and test interactions never enter the graph, and the cache key
    depends on the training edges alone. MMRec ships no script for the split it
    trains on (its ``dualgnn-gen-u-u-matrix.py`` also reads the ``x_label == 0``
    rows, the training split); this is that graph, computed sparsely.

    Args:
        k (int): neighbours kept per user. (default: ``40``, DualGNN's and DRAGON's)
    """

    def __init__(self, k: int = 40) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f'UserCooccurrence: k: expected a positive integer, got '
                             f'{k!r}')
        self.k = k

    @property
    def edge_type(self) -> EdgeType:
        return ('user', cooccurrence_relation(self.k), 'user')

    def outputs(self, data):
        return [(self.edge_type, 'edge_index'), (self.edge_type, 'edge_weight')]

    def inputs(self, data):
        return [data[UI].edge_index]

    def compute(self, data):
        edge_index, count = user_cooccurrence_edges(
            data[UI].edge_index, int(data['user'].num_nodes),
            int(data['item'].num_nodes), self.k)
        return {self.edge_type: {'edge_index': edge_index, 'edge_weight': count}}

    def __repr__(self) -> str:
        return f'UserCooccurrence(k={self.k})'


class ItemCooccurrence(UserCooccurrence):
    r"""The item-item co-occurrence graph of the **training** interactions (DA-MRS's
    behaviour graph, its ``build_iib_graph.py``).

    For items :math:`i \ne j` with distinct training users :math:`\mathcal{U}_i,
    \mathcal{U}_j`, :math:`c_{ij} = |\mathcal{U}_i \cap \mathcal{U}_j|`; each item
    keeps the at most :math:`k` items with the largest :math:`c_{ij} \ge`
    ``min_count`` (ties: the lower id). Stores ``data['item', relation, 'item']``
    (``cooccur{k}``, with ``_min{c}`` for ``min_count`` above 1) with ``edge_index``
    (row 0 the neighbour, row 1 the item) and ``edge_weight`` :math:`c_{ij}`
    (float64). It is :func:`~mambarec_pyg.data.graphs.user_cooccurrence_edges` with
    the roles of users and items swapped (its outputs and inputs are
    :class:`UserCooccurrence`'s); only the training split is read.

    Args:
        k (int): neighbours kept per item. (default: ``2``, MMRec's
            ``item_graph_dict_2.npy``)
        min_count (int): the fewest shared users of a kept pair. (default: ``2``,
            DA-MRS's)
    """

    def __init__(self, k: int = 2, min_count: int = 2) -> None:
        for name, value in (('k', k), ('min_count', min_count)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'ItemCooccurrence: {name}: expected a positive '
                                 f'integer, got {value!r}')
        self.k, self.min_count = k, min_count

    @property
    def edge_type(self) -> EdgeType:
        suffix = f'_min{self.min_count}' if self.min_count > 1 else ''
        return ('item', cooccurrence_relation(self.k) + suffix, 'item')

    def compute(self, data):
        # the top k by count come first, so dropping small counts afterwards keeps
        # the top k of the counts >= min_count
        edge_index, count = user_cooccurrence_edges(
            data[UI].edge_index.flip(0), int(data['item'].num_nodes),
            int(data['user'].num_nodes), self.k)
        keep = count >= self.min_count
        return {self.edge_type: {'edge_index': edge_index[:, keep],
                                 'edge_weight': count[keep]}}

    def __repr__(self) -> str:
        return f'ItemCooccurrence(k={self.k}, min_count={self.min_count})'


class DenoisedItemKNN(ItemKNN):
    r"""DA-MRS's denoised kNN item-item graphs, one per modality, on the item pairs
    similar (above the modality's mean cosine similarity) in every modality
    (:func:`~mambarec_pyg.data.graphs.denoised_knn_edges` gives the definition).

    Stores ``data['item', denoised_knn_relation(m, k), 'item']`` with
    ``edge_index`` (row 0 the neighbour, row 1 the item) and ``edge_weight``
    (binary, normalised by the row degrees; float64), like :class:`ItemKNN` (whose
    modality selection, outputs and inputs it shares). Every modality's graph
    depends on all the modalities used.

    Args:
        k (int): neighbours per item at most, itself included. (default: ``10``)
        modalities (sequence of str, optional): which modalities (default: all of
            ``data.modalities``).
    """

    def __init__(self, k: int = 10, modalities: Optional[Sequence[str]] = None) -> None:
        super().__init__(k, 'binary', modalities)

    def knn_backend(self, data) -> KNNBackend:
        """Always exact: the candidates depend on every pair's similarity (the mean
        over all pairs), which no nearest-neighbour index gives."""
        return KNNBackend()

    def relation(self, modality: str) -> str:
        return denoised_knn_relation(modality, self.k)

    def compute(self, data):
        mods = self._modalities(data)
        graphs = denoised_knn_edges([data['item'][m] for m in mods], self.k)
        return {self.edge_type(m): {'edge_index': ei, 'edge_weight': w}
                for m, (ei, w) in zip(mods, graphs)}

    def __repr__(self) -> str:
        mods = '' if self.modalities is None else f', modalities={self.modalities}'
        return f'DenoisedItemKNN(k={self.k}{mods})'


class PrincipalGraph(GraphTransform):
    r"""PGL's global principal graph of the **training** interactions
    (:func:`~mambarec_pyg.data.graphs.principal_graph_edges` gives the definition):
    a low-rank rebuild :math:`\mathbf{P}` of the normalised user-item adjacency from
    its ``rank`` leading singular triplets, small entries dropped.

    :math:`\mathbf{P}` lives on all :math:`U + N` nodes, so it is stored as four
    edge types ``(src, principal_relation(rank), dst)`` for ``src, dst`` in
    ``user``, ``item`` (:data:`PRINCIPAL_BLOCKS`), each with ``edge_index`` (row 0
    the source, row 1 the target, ids within their node type) and ``edge_weight``
    (float64); for the bipartite adjacency the user-user and item-item blocks are
    (numerically) empty. :meth:`adjacency` puts the blocks back together.

    Args:
        rank (int): the number of singular triplets. (default: ``64``, PGL's
            embedding size)
    """

    def __init__(self, rank: int = 64) -> None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f'PrincipalGraph: rank: expected a positive integer, got '
                             f'{rank!r}')
        self.rank = rank

    def edge_type(self, src: str, dst: str) -> EdgeType:
        return (src, principal_relation(self.rank), dst)

    def outputs(self, data):
        return [(self.edge_type(s, d), a) for s, d in PRINCIPAL_BLOCKS
                for a in ('edge_index', 'edge_weight')]

    def inputs(self, data):
        return [data[UI].edge_index]

    def compute(self, data):
        num_users = int(data['user'].num_nodes)
        edge_index, weight = principal_graph_edges(
            data[UI].edge_index, num_users, int(data['item'].num_nodes), self.rank)
        src, dst = edge_index
        out = {}
        for s, d in PRINCIPAL_BLOCKS:
            keep = ((src >= num_users) == (s == 'item')) & \
                ((dst >= num_users) == (d == 'item'))
            shift = torch.tensor([[num_users if s == 'item' else 0],
                                  [num_users if d == 'item' else 0]],
                                 device=edge_index.device)
            out[self.edge_type(s, d)] = {'edge_index': edge_index[:, keep] - shift,
                                         'edge_weight': weight[keep]}
        return out

    def adjacency(self, data, dtype: Optional[torch.dtype] = None):
        r""":math:`\mathbf{P}` as one ``[U + N, U + N]`` CSR matrix (rows are
        targets, users first) from the blocks on ``data``."""
        num_users = int(data['user'].num_nodes)
        n = num_users + int(data['item'].num_nodes)
        edges, weights = [], []
        for s, d in PRINCIPAL_BLOCKS:
            store = data[self.edge_type(s, d)]
            shift = torch.tensor([[num_users if s == 'item' else 0],
                                  [num_users if d == 'item' else 0]])
            edges.append(store.edge_index.cpu() + shift)
            weights.append(store.edge_weight.cpu())
        return sparse_from_edges(torch.cat(edges, dim=1), torch.cat(weights), (n, n),
                                 dtype=dtype or torch.get_default_dtype(),
                                 layout='csr')

    def __repr__(self) -> str:
        return f'PrincipalGraph(rank={self.rank})'


def apply_transforms(data, transforms: Sequence[GraphTransform],
                     processed_dir: Optional[PathLike] = None):
    """Apply ``transforms`` in order, each only where its outputs are missing.

    With ``processed_dir`` (default: ``data.processed_dir`` when the loader set it),
    each transform's result is read from / written to
    ``processed_dir/<Transform>-<key>.pt`` (:meth:`GraphTransform.cache_key`: its
    arguments and the content of its inputs). A directory that cannot be written
    gives a warning and the graphs are computed in memory.
    """
    if processed_dir is None:
        processed_dir = getattr(data, 'processed_dir', None)
    for t in transforms:
        if t.present(data):
            continue
        if processed_dir is None:
            data = t(data)
            continue
        path = Path(processed_dir) / f'{type(t).__name__}-{t.cache_key(data)[:40]}.pt'
        graphs = _read(path, t.outputs(data))
        if graphs is None:
            graphs = t.compute(data)
            _write(path, graphs, repr(t))
        data = attach(data, graphs)
    return data


def _read(path: Path, outputs) -> Optional[Dict[EdgeType, Dict[str, Tensor]]]:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location='cpu', weights_only=True)
        graphs = {tuple(k.split('__')): v for k, v in saved['graphs'].items()}
        for edge_type, attr in outputs:
            if not isinstance(graphs[edge_type][attr], Tensor):
                return None
        return graphs
    except Exception:  # unreadable or foreign: recompute and overwrite
        return None


def _write(path: Path, graphs, description: str) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save({'graphs': {'__'.join(k): v for k, v in graphs.items()},
                        'transform': description, 'version': _VERSION}, tmp)
    except OSError as e:
        warnings.warn(f'could not cache the graphs in {path.parent} ({e.strerror}); '
                      f'they are computed in memory each time', RuntimeWarning,
                      stacklevel=3)
