r"""Exporting a trained model for serving, and reading an export back.

A model's recommendations are the top-:math:`k` items by the inner product of its
final embeddings (:meth:`Recommender.recommend
<mambarec_pyg.models.base.Recommender.recommend>`):
:math:`s(u, i) = \langle e_u, e_i \rangle` with ``(e_user, e_item) =
model.eval_embeddings()``, each user's training items excluded. An export holds
exactly what that ranking needs, so a service answers without the model, its
graphs or torch:

::

    DIR/current -> versions/<id>      a symbolic link, replaced atomically
    DIR/versions/<id>/
        manifest.json                 model, config, data fingerprint, embedding
                                      width, score function, created-at, format,
                                      a sha256 per file
        user_embeddings.npy           float32 [U, d]
        item_embeddings.npy           float32 [N, d]
        seen_rowptr.npy               int64 [U + 1]  each user's training items
        seen_items.npy                int64 [E]      as CSR, sorted per user
        item_popularity.npy           int64 [N]  distinct training users per item
                                      (the ranking for unknown users)
        user_ids.json, item_ids.json  external ids by internal id, when the data
                                      have them (MMRec's u_id_mapping.csv and
                                      i_id_mapping.csv)

An export of score function ``'sparse_dot'`` (below) holds, in place of the two
embedding files, the item-item weights :math:`\mathbf{W}` ``[N, N]`` as CSR:

::

        similarity_rowptr.npy         int64 [N + 1]  row i: the items j with a
        similarity_items.npy          int64 [S]      weight W[i, j], sorted per row
        similarity_values.npy         float32 [S]    and their weights

A version directory is assembled under a temporary name and renamed into
``versions/`` when complete (:func:`mambarec_pyg.io.atomic_directory`); publishing it
is one atomic ``rename`` of a new ``current`` link over the old one. A reader
resolves ``current`` once and reads only that version's files, so a running service
never sees half an export, and a reader that resolved the old link still finds the
previous version (the newest ``keep`` versions are kept; older ones are removed).

The manifest's ``score_function`` says how a user's scores are computed:

* ``'dot'``: the inner product above (the embeddings of most-popular ranking are ones
  for every user and the training count per item, so its ranking is an inner
  product too); ``embedding_dim`` is the width :math:`d`;
* ``'sparse_dot'``: :math:`s(u, j) = \sum_{i \in \mathcal{I}_u} \mathbf{W}_{ij}`,
  the user's row of the training matrix (``seen_rowptr``, ``seen_items``, binary)
  times the item-item weights -- a model whose :meth:`embed
  <mambarec_pyg.models.base.Recommender.embed>` returns sparse matrices
  :math:`(\mathbf{R}, \mathbf{W}^\top)` with :math:`\mathbf{R}` the binary
  training interactions (content-based item kNN, ``itemknncbf``); its ranking is
  the same inner product, done sparsely. ``embedding_dim`` is ``null`` and
  ``similarity`` gives the number of weights.

A model whose class overrides
:meth:`~mambarec_pyg.models.base.Recommender.recommend` may rank by something else
and is refused rather than exported wrongly; one that overrides
:meth:`~mambarec_pyg.models.base.Recommender.score` is exported only when its scores
of a sample of pairs equal the export's score function.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..io import atomic_directory

__all__ = ['FORMAT', 'SCORE_FUNCTIONS', 'Export', 'ExportError', 'export_model',
           'write_export', 'load_export', 'resolve_export', 'read_id_maps',
           'interactions_fingerprint', 'data_fingerprint', 'checkpoint_info',
           'list_versions', 'check_target', 'sparse_dot_scores', 'SCORE_ARRAYS']

PathLike = Union[str, os.PathLike]

#: Format of the manifest and the files (``manifest['format']``).
FORMAT = 'mambarec_pyg.export/1'
#: Score functions an export may declare: ``'dot'``, :math:`\langle e_u, e_i\rangle`;
#: ``'sparse_dot'``, the user's training row times the item-item weights.
SCORE_FUNCTIONS = ('dot', 'sparse_dot')
#: The link naming the published version, and the folder of versions.
CURRENT = 'current'
VERSIONS = 'versions'
MANIFEST = 'manifest.json'
USER_IDS = 'user_ids.json'
ITEM_IDS = 'item_ids.json'
#: The arrays of an export: file name, dtype, number of dimensions.
ARRAYS: Dict[str, Tuple[str, str, int]] = {
    'user_embeddings': ('user_embeddings.npy', 'float32', 2),
    'item_embeddings': ('item_embeddings.npy', 'float32', 2),
    'seen_rowptr': ('seen_rowptr.npy', 'int64', 1),
    'seen_items': ('seen_items.npy', 'int64', 1),
    'item_popularity': ('item_popularity.npy', 'int64', 1),
    'similarity_rowptr': ('similarity_rowptr.npy', 'int64', 1),
    'similarity_items': ('similarity_items.npy', 'int64', 1),
    'similarity_values': ('similarity_values.npy', 'float32', 1),
}
#: The arrays each score function's export holds.
SCORE_ARRAYS: Dict[str, Tuple[str, ...]] = {
    'dot': ('user_embeddings', 'item_embeddings', 'seen_rowptr', 'seen_items',
            'item_popularity'),
    'sparse_dot': ('similarity_rowptr', 'similarity_items', 'similarity_values',
                   'seen_rowptr', 'seen_items', 'item_popularity'),
}


class ExportError(ValueError):
    """An export cannot be written or read; the message names the file or field and
    what was expected."""


# ---------------------------------------------------------------------------------
# A loaded export
# ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Export:
    """One export version in memory; every array is read-only.

    Attributes:
        path: the version directory it was read from.
        manifest: the parsed ``manifest.json``.
        seen_rowptr, seen_items: each user's training items as CSR (int64).
        item_popularity: int64 ``[N]``, distinct training users per item.
        user_embeddings, item_embeddings: float32 ``[U, d]`` and ``[N, d]``
            (score function ``'dot'``; ``None`` otherwise).
        similarity_rowptr, similarity_items, similarity_values: the item-item
            weights as CSR (score function ``'sparse_dot'``; ``None`` otherwise).
        user_ids, item_ids: external ids by internal id, or ``None``.
    """

    path: Path
    manifest: Dict[str, Any]
    seen_rowptr: np.ndarray
    seen_items: np.ndarray
    item_popularity: np.ndarray
    user_embeddings: Optional[np.ndarray] = None
    item_embeddings: Optional[np.ndarray] = None
    similarity_rowptr: Optional[np.ndarray] = None
    similarity_items: Optional[np.ndarray] = None
    similarity_values: Optional[np.ndarray] = None
    user_ids: Optional[Tuple[str, ...]] = None
    item_ids: Optional[Tuple[str, ...]] = None

    @property
    def id(self) -> str:
        """The version's id (the name of its directory)."""
        return self.manifest['id']

    @property
    def score_function(self) -> str:
        """``'dot'`` or ``'sparse_dot'`` (the module docstring)."""
        return self.manifest['score_function']

    @property
    def num_users(self) -> int:
        return int(self.seen_rowptr.shape[0] - 1)

    @property
    def num_items(self) -> int:
        return int(self.item_popularity.shape[0])

    @property
    def dim(self) -> Optional[int]:
        """The embedding width (``None`` for a ``'sparse_dot'`` export)."""
        if self.item_embeddings is None:
            return None
        return int(self.item_embeddings.shape[1])

    def seen(self, user: int) -> np.ndarray:
        """The training items of internal user id ``user`` (sorted)."""
        return self.seen_items[self.seen_rowptr[user]:self.seen_rowptr[user + 1]]


# ---------------------------------------------------------------------------------
# Fingerprints and id maps
# ---------------------------------------------------------------------------------
def interactions_fingerprint(num_users: int, num_items: int, rowptr: np.ndarray,
                             items: np.ndarray) -> str:
    """``'sha256:<hex>'`` of the training interactions: the numbers of users and
    items and each user's sorted distinct items (CSR), as little-endian int64."""
    h = hashlib.sha256()
    h.update(np.asarray([num_users, num_items], dtype='<i8').tobytes())
    h.update(np.ascontiguousarray(rowptr, dtype='<i8').tobytes())
    h.update(np.ascontiguousarray(items, dtype='<i8').tobytes())
    return 'sha256:' + h.hexdigest()


def data_fingerprint(data) -> str:
    """:func:`interactions_fingerprint` of ``data``'s training interactions."""
    from ..data.index import training_index
    index = training_index(data)
    lists = index.user_items
    return interactions_fingerprint(index.num_users, index.num_items,
                                    lists.rowptr.numpy(), lists.col.numpy())


def read_id_maps(directory: Optional[PathLike], num_users: int, num_items: int
                 ) -> Tuple[Optional[Tuple[str, ...]], Optional[Tuple[str, ...]]]:
    """External ids by internal id from an MMRec dataset directory.

    Reads ``u_id_mapping.csv`` (columns ``user_id``, ``userID``) and
    ``i_id_mapping.csv`` (``asin``, ``itemID``), tab-separated with a header, as
    :func:`~mambarec_pyg.data.amazon.prepare_amazon` and MMRec write them; a missing
    file (or ``directory=None``) gives ``None`` for that side.

    Raises:
        ExportError: a file that does not map every internal id ``0..n-1`` exactly
            once to a distinct, non-empty external id (naming the file and row).
    """
    from ..data.amazon import ITEM_MAPPING, USER_MAPPING
    if directory is None:
        return None, None
    out = []
    for file, internal, n in ((USER_MAPPING, 'userID', num_users),
                              (ITEM_MAPPING, 'itemID', num_items)):
        path = Path(directory) / file
        out.append(_read_id_map(path, internal, n) if path.is_file() else None)
    return out[0], out[1]


def _read_id_map(path: Path, internal: str, n: int) -> Tuple[str, ...]:
    import pandas as pd
    try:
        frame = pd.read_csv(path, sep='\t', dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ExportError(f'{path}: not a tab-separated id map ({e})') from None
    if internal not in frame.columns or len(frame.columns) != 2:
        raise ExportError(f'{path}: expected two tab-separated columns, an external '
                          f'id and {internal!r}, found {list(frame.columns)}')
    external = [c for c in frame.columns if c != internal][0]
    ids = np.full(n, None, dtype=object)
    lines: Dict[str, int] = {}
    for row, (ext, value) in enumerate(zip(frame[external], frame[internal]), 2):
        if not value.isdigit() or int(value) >= n:
            raise ExportError(f'{path}: line {row}, column {internal!r}: expected an '
                              f'id in [0, {n}), got {value!r}')
        if not ext:
            raise ExportError(f'{path}: line {row}, column {external!r}: empty id')
        if ids[int(value)] is not None:
            raise ExportError(f'{path}: line {row}: {internal} {value} is mapped '
                              f'twice')
        if ext in lines:
            raise ExportError(f'{path}: line {row}: external id {ext!r} is also on '
                              f'line {lines[ext]}; expected one {internal} per id')
        ids[int(value)] = ext
        lines[ext] = row
    missing = np.flatnonzero(ids == None)  # noqa: E711 - elementwise on objects
    if missing.size:
        raise ExportError(f'{path}: {missing.size} of {n} {internal}s have no '
                          f'external id (first: {int(missing[0])}); expected one row '
                          f'per id 0..{n - 1}')
    return tuple(str(v) for v in ids)


def dataset_directory(data) -> Optional[Path]:
    """The MMRec directory ``data`` was loaded from (``None`` when unknown)."""
    processed = getattr(data, 'processed_dir', None)
    return Path(processed).parent if processed else None


def checkpoint_info(path: PathLike, state: Optional[Mapping[str, Any]] = None
                    ) -> Dict[str, Any]:
    """What a manifest records of the checkpoint an export came from: its absolute
    path, sha256 and, from ``state`` (the loaded checkpoint), the best epoch and its
    validation metrics."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    info: Dict[str, Any] = {'path': str(path.resolve()), 'sha256': h.hexdigest()}
    if state is not None:
        for key in ('kind', 'best_epoch', 'best_valid'):
            if key in state:
                info[key] = state[key]
    return info


# ---------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------
def export_model(model, data, output: PathLike, *, config: Any = None,
                 checkpoint: Optional[Mapping[str, Any]] = None,
                 data_spec: Optional[Mapping[str, Any]] = None,
                 id_maps: Union[str, None, Tuple[Optional[Sequence[str]],
                                                 Optional[Sequence[str]]]] = 'auto',
                 overwrite: bool = False, keep: int = 2) -> Path:
    """Export ``model`` (any :class:`~mambarec_pyg.models.base.Recommender`) built
    on ``data`` to the export directory ``output``; return the new version's
    directory.

    Args:
        model: the trained model (its eval-mode embeddings are exported).
        data: the data it was built on (training items, popularity, id maps).
        output: the export directory (created if missing).
        config: the run's :class:`~mambarec_pyg.config.Config` (or a dict), recorded
            in the manifest.
        checkpoint: what to record of the checkpoint (:func:`checkpoint_info`).
        data_spec: how to load the data again (a
            :class:`~mambarec_pyg.config.DataConfig` as a dict; default: the
            config's).
        id_maps: ``'auto'`` reads MMRec's id-mapping files next to the data
            (:func:`read_id_maps`), ``None`` exports none, or ``(user_ids, item_ids)``
            (either may be ``None``).
        overwrite: replace the export ``output`` holds (atomically).
        keep: versions kept in ``output/versions`` (the published one included).

    Raises:
        ExportError: the model cannot be exported (its ranking is not an inner
            product of its embeddings, or they are not finite) or bad id maps.
        FileExistsError: ``output`` holds an export and ``overwrite`` is false.
    """
    import torch

    from ..config import to_dict
    from ..data.index import training_index
    from ..models.base import Recommender
    if not isinstance(model, Recommender):
        raise ExportError(f'model: expected a mambarec_pyg Recommender, got '
                          f'{type(model).__name__}')
    cls = type(model)
    if cls.recommend is not Recommender.recommend:
        raise ExportError(f'model {cls.name or cls.__name__!r} overrides '
                          f'Recommender.recommend: its ranking may not be the inner '
                          f'product of eval_embeddings(), the only ranking an export '
                          f'supports (score functions {", ".join(SCORE_FUNCTIONS)})')
    num_users, num_items = int(data['user'].num_nodes), int(data['item'].num_nodes)
    if (num_users, num_items) != (model.num_users, model.num_items):
        raise ExportError(f'data: {num_users} users and {num_items} items, but the '
                          f'model was built for {model.num_users} and '
                          f'{model.num_items}')
    with torch.no_grad():
        user, item = model.eval_embeddings()
    rowptr = model.train_rowptr.detach().cpu().numpy()
    seen = model.train_items.detach().cpu().numpy()
    name = cls.name or cls.__name__
    if user.is_sparse or item.is_sparse:
        score_function = 'sparse_dot'
        similarity = _similarity_csr(name, user, item, rowptr, seen)
        arrays: Dict[str, Any] = dict(zip(('similarity_rowptr', 'similarity_items',
                                           'similarity_values'), similarity))
    else:
        score_function = 'dot'
        arrays = {'user_embeddings': user.detach().to('cpu', torch.float32).numpy(),
                  'item_embeddings': item.detach().to('cpu', torch.float32).numpy()}
    if cls.score is not Recommender.score:
        _check_model_scores(model, name, score_function, arrays, rowptr, seen)
    popularity = training_index(data).item_degree.numpy()
    if id_maps == 'auto':
        user_ids, item_ids = read_id_maps(dataset_directory(data), num_users,
                                          num_items)
    elif id_maps is None:
        user_ids = item_ids = None
    else:
        user_ids, item_ids = id_maps
    if config is not None and not isinstance(config, Mapping):
        config = to_dict(config)
    data_info = {'name': getattr(data, 'name', None),
                 'modalities': list(getattr(data, 'modalities', None) or ())}
    if data_spec is not None:
        data_info['spec'] = dict(data_spec)
    elif config is not None and isinstance(config.get('data'), Mapping):
        data_info['spec'] = dict(config['data'])
    return write_export(
        output, arrays.get('user_embeddings'), arrays.get('item_embeddings'),
        rowptr, seen, popularity,
        similarity=(similarity if score_function == 'sparse_dot' else None),
        score_function=score_function,
        model={'name': name,
               'class': f'{cls.__module__}.{cls.__qualname__}'},
        config=config, data=data_info, checkpoint=checkpoint,
        user_ids=user_ids, item_ids=item_ids, overwrite=overwrite, keep=keep)


def _similarity_csr(name: str, user, item, rowptr: np.ndarray, seen: np.ndarray
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The item-item weights :math:`\\mathbf{W}` as CSR ``(rowptr, items, values)``
    from sparse embeddings ``(R [U, N], W^T [N, N])``, after checking that ``R`` is
    the binary training matrix (the ``'sparse_dot'`` score function)."""
    import torch
    if not (user.is_sparse and item.is_sparse):
        raise ExportError(f'model {name!r}: one of its embeddings is sparse and the '
                          f'other dense; expected both dense (score function '
                          f"'dot') or both sparse ('sparse_dot')")
    U, N = rowptr.shape[0] - 1, int(item.shape[0])
    if tuple(user.shape) != (U, N) or tuple(item.shape) != (N, N):
        raise ExportError(f'model {name!r}: sparse embeddings of shapes '
                          f'{tuple(user.shape)} and {tuple(item.shape)}; expected '
                          f'[users, items] = [{U}, {N}] and [items, items] '
                          f"(score function 'sparse_dot')")
    r = user.detach().cpu().coalesce()
    rows, cols = r.indices().numpy()
    train_rows = np.repeat(np.arange(U), np.diff(rowptr))
    order = np.lexsort((seen, train_rows))
    if not (np.array_equal(rows, train_rows[order]) and
            np.array_equal(cols, seen[order]) and bool((r.values() == 1).all())):
        raise ExportError(f"model {name!r}: its sparse user embeddings are not the "
                          f"binary training interactions, which score function "
                          f"'sparse_dot' multiplies by the item-item weights")
    w = item.detach().cpu().t().coalesce()  # W [N, N]: row i holds W[i, j]
    w_rows, w_cols = w.indices().numpy()
    values = w.values().to(torch.float32).numpy()
    counts = np.bincount(w_rows, minlength=N)
    w_rowptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return w_rowptr, w_cols.astype(np.int64), values


def _check_model_scores(model, name: str, score_function: str,
                        arrays: Mapping[str, np.ndarray], rowptr: np.ndarray,
                        seen: np.ndarray, pairs: int = 256) -> None:
    """Raise unless the model's own :meth:`score` (which its class overrides) equals
    the export's score function on ``pairs`` pairs (users ``0, 1, ...`` in turn,
    items drawn with a fixed seed)."""
    U, N = rowptr.shape[0] - 1, int(model.num_items)
    rng = np.random.default_rng(0)
    users = np.resize(np.arange(U), pairs)
    items = rng.integers(0, N, size=pairs)
    want = np.asarray(model.score(users, items).detach().cpu().double().numpy())
    if score_function == 'dot':
        got = (arrays['user_embeddings'][users].astype(np.float64) *
               arrays['item_embeddings'][items].astype(np.float64)).sum(axis=1)
    else:
        got = sparse_dot_scores(arrays['similarity_rowptr'],
                                arrays['similarity_items'],
                                arrays['similarity_values'], rowptr, seen, users,
                                items)
    if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        bad = int(np.flatnonzero(~np.isclose(got, want, rtol=1e-4, atol=1e-5))[0])
        raise ExportError(f'model {name!r} overrides Recommender.score and its score '
                          f'of user {int(users[bad])}, item {int(items[bad])} is '
                          f'{want[bad]:.6g}, but the export ({score_function!r}) '
                          f'gives {got[bad]:.6g}; its ranking may not be one an '
                          f'export can reproduce')


def sparse_dot_scores(sim_rowptr: np.ndarray, sim_items: np.ndarray,
                      sim_values: np.ndarray, seen_rowptr: np.ndarray,
                      seen_items: np.ndarray, users: np.ndarray,
                      items: np.ndarray) -> np.ndarray:
    """Score function ``'sparse_dot'`` of the pairs ``(users[k], items[k])``, a plain
    loop: :math:`\\sum_{i \\in \\mathcal{I}_u} \\mathbf{W}_{ij}` (float64)."""
    out = np.zeros(len(users), dtype=np.float64)
    for n, (u, j) in enumerate(zip(users, items)):
        for i in seen_items[seen_rowptr[u]:seen_rowptr[u + 1]]:
            row = slice(sim_rowptr[i], sim_rowptr[i + 1])
            hit = sim_items[row] == j
            out[n] += float(sim_values[row][hit].sum())
    return out


def write_export(output: PathLike, user_embeddings: Optional[np.ndarray],
                 item_embeddings: Optional[np.ndarray], seen_rowptr: np.ndarray,
                 seen_items: np.ndarray, item_popularity: np.ndarray, *,
                 model: Mapping[str, Any],
                 similarity: Optional[Tuple[np.ndarray, np.ndarray,
                                            np.ndarray]] = None,
                 config: Optional[Mapping[str, Any]] = None,
                 data: Optional[Mapping[str, Any]] = None,
                 checkpoint: Optional[Mapping[str, Any]] = None,
                 user_ids: Optional[Sequence[str]] = None,
                 item_ids: Optional[Sequence[str]] = None,
                 score_function: str = 'dot', overwrite: bool = False,
                 keep: int = 2) -> Path:
    """Write and publish one export version from arrays (the format above); return
    its directory. :func:`export_model` calls this with a model's arrays.

    ``model`` names the model (``{'name': ..., 'class': ...}``); ``data`` is recorded
    with the numbers of users, items and training interactions and the
    :func:`interactions_fingerprint` added. Score function ``'dot'`` takes the two
    embedding tables; ``'sparse_dot'`` takes ``None`` for them and ``similarity``,
    the item-item weights as CSR ``(rowptr [N + 1], items, values)``. Every array is
    checked (dtype, shape, finite values, ids in range) before anything is written.
    """
    output = Path(output)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ExportError(f'keep: expected a positive integer, got {keep!r}')
    if score_function not in SCORE_FUNCTIONS:
        raise ExportError(f'score_function: expected one of {SCORE_FUNCTIONS}, got '
                          f'{score_function!r}')
    given = {'user_embeddings': user_embeddings, 'item_embeddings': item_embeddings,
             'seen_rowptr': seen_rowptr, 'seen_items': seen_items,
             'item_popularity': item_popularity}
    if similarity is not None:
        if not isinstance(similarity, (tuple, list)) or len(similarity) != 3:
            raise ExportError('similarity: expected (rowptr, items, values), the '
                              'item-item weights as CSR')
        given.update(zip(('similarity_rowptr', 'similarity_items',
                          'similarity_values'), similarity))
    for name in ARRAYS:
        value = given.get(name)
        needed = name in SCORE_ARRAYS[score_function]
        if needed and value is None:
            raise ExportError(f'{name}: required by score function '
                              f'{score_function!r}')
        if not needed and value is not None:
            raise ExportError(f'{name}: not part of an export of score function '
                              f'{score_function!r} (expected None)')
    arrays = {name: np.ascontiguousarray(given[name], dtype=ARRAYS[name][1])
              for name in SCORE_ARRAYS[score_function]}
    _check_arrays(arrays, user_ids, item_ids, where='export')
    check_target(output, overwrite)
    num_users = arrays['seen_rowptr'].shape[0] - 1
    num_items = arrays['item_popularity'].shape[0]
    dim = (int(arrays['item_embeddings'].shape[1]) if score_function == 'dot'
           else None)
    created = _dt.datetime.now(_dt.timezone.utc)
    version = f'{created:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(3)}'
    data_info = dict(data or {})
    data_info.update(num_users=num_users, num_items=num_items,
                     num_train_interactions=int(arrays['seen_items'].size),
                     fingerprint=interactions_fingerprint(
                         num_users, num_items, arrays['seen_rowptr'],
                         arrays['seen_items']))
    from .. import __version__
    manifest: Dict[str, Any] = {
        'format': FORMAT, 'id': version,
        'created_at': created.isoformat(timespec='seconds').replace('+00:00', 'Z'),
        'model': dict(model), 'config': config, 'checkpoint': checkpoint,
        'data': data_info, 'embedding_dim': dim,
        'score_function': score_function,
        'ids': {'user': 'external' if user_ids is not None else 'internal',
                'item': 'external' if item_ids is not None else 'internal'},
        'library': {'mambarec_pyg': __version__, 'numpy': np.__version__},
        'files': {},
    }
    if score_function == 'sparse_dot':
        manifest['similarity'] = {'num_weights': int(arrays['similarity_items'].size),
                                  'max_per_item': int(np.diff(
                                      arrays['similarity_rowptr']).max())}
    (output / VERSIONS).mkdir(parents=True, exist_ok=True)
    target = output / VERSIONS / version
    with atomic_directory(target) as tmp:
        for name, array in arrays.items():
            file = ARRAYS[name][0]
            buf = io.BytesIO()
            np.save(buf, array, allow_pickle=False)
            raw = buf.getvalue()
            (tmp / file).write_bytes(raw)
            manifest['files'][file] = {'sha256': hashlib.sha256(raw).hexdigest(),
                                       'dtype': ARRAYS[name][1],
                                       'shape': list(array.shape)}
        for file, ids in ((USER_IDS, user_ids), (ITEM_IDS, item_ids)):
            if ids is not None:
                raw = json.dumps(list(ids), ensure_ascii=False).encode('utf-8')
                (tmp / file).write_bytes(raw)
                manifest['files'][file] = {'sha256': hashlib.sha256(raw).hexdigest(),
                                           'count': len(ids)}
        (tmp / MANIFEST).write_text(json.dumps(_jsonable(manifest), indent=2) + '\n')
    try:
        _publish(output, version, overwrite)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    _prune(output, keep)
    return target


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, 'tolist'):  # numpy and torch scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def _check_arrays(arrays: Dict[str, np.ndarray], user_ids, item_ids,
                  where: str) -> None:
    """Shapes, finiteness and id ranges of an export's arrays (``where``: the
    directory, or ``'export'`` while writing); ``arrays`` holds those of one score
    function (:data:`SCORE_ARRAYS`)."""
    def fail(name: str, what: str) -> None:
        file = ARRAYS[name][0] if name in ARRAYS else name
        raise ExportError(f'{where}: {file}: {what}')

    for name, array in arrays.items():
        if array.ndim != ARRAYS[name][2]:
            fail(name, f'expected {ARRAYS[name][2]} dimension(s), got shape '
                       f'{tuple(array.shape)}')
    popularity = arrays['item_popularity']
    rowptr, seen = arrays['seen_rowptr'], arrays['seen_items']
    U, N = rowptr.shape[0] - 1, popularity.shape[0]
    if 'item_embeddings' in arrays:
        user, item = arrays['user_embeddings'], arrays['item_embeddings']
        U, N = user.shape[0], item.shape[0]
        if N == 0:
            fail('item_embeddings', 'expected at least one item')
        if user.shape[1] != item.shape[1] or item.shape[1] == 0:
            fail('user_embeddings', f'expected the width of the item embeddings '
                                    f'{item.shape[1]} (> 0), got shape '
                                    f'{tuple(user.shape)}')
        for name, emb in (('user_embeddings', user), ('item_embeddings', item)):
            if not np.isfinite(emb.sum(dtype=np.float64)) or \
                    not np.isfinite(emb).all():
                row = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
                fail(name, f'row {row} holds NaN or inf; expected finite embeddings')
    _check_rowptr('seen_rowptr', rowptr, 'U', U, seen.shape[0], fail)
    if seen.size and (seen.min() < 0 or seen.max() >= N):
        fail('seen_items', f'expected item ids in [0, {N})')
    if popularity.shape[0] != N or (popularity.size and popularity.min() < 0):
        fail('item_popularity', f'expected {N} non-negative counts, got shape '
                                f'{tuple(popularity.shape)}')
    if 'similarity_rowptr' in arrays:
        _check_similarity(arrays, N, fail)
    for file, ids, n in ((USER_IDS, user_ids, U), (ITEM_IDS, item_ids, N)):
        if ids is None:
            continue
        if len(ids) != n:
            fail(file, f'expected {n} external ids, got {len(ids)}')
        if not all(isinstance(v, str) and v for v in ids):
            fail(file, 'expected non-empty strings')
        if len(set(ids)) != n:
            fail(file, 'expected distinct external ids')


def _check_rowptr(name: str, rowptr: np.ndarray, rows_name: str, rows: int,
                  entries: int, fail) -> None:
    """CSR row pointers of ``rows`` rows over ``entries`` entries."""
    if rowptr.shape[0] != rows + 1 or rows < 0 or rowptr[0] != 0 or \
            rowptr[-1] != entries or (np.diff(rowptr) < 0).any():
        fail(name, f'expected non-decreasing row pointers [{rows_name} + 1 = '
                   f'{rows + 1}] from 0 to {entries}, got shape {tuple(rowptr.shape)}')


def _check_similarity(arrays: Dict[str, np.ndarray], N: int, fail) -> None:
    """The item-item weights of a ``'sparse_dot'`` export: CSR ``[N, N]``, each row's
    items strictly increasing, finite weights."""
    rowptr = arrays['similarity_rowptr']
    items, values = arrays['similarity_items'], arrays['similarity_values']
    if N == 0:
        fail('item_popularity', 'expected at least one item')
    _check_rowptr('similarity_rowptr', rowptr, 'N', N, items.shape[0], fail)
    if values.shape != items.shape:
        fail('similarity_values', f'expected one weight per entry of '
                                  f'similarity_items ({items.shape[0]}), got shape '
                                  f'{tuple(values.shape)}')
    if items.size and (items.min() < 0 or items.max() >= N):
        fail('similarity_items', f'expected item ids in [0, {N})')
    if items.size > 1:
        row_of = np.repeat(np.arange(N), np.diff(rowptr))
        step = np.diff(items)
        same_row = row_of[1:] == row_of[:-1]
        if (step[same_row] <= 0).any():
            row = int(row_of[1:][same_row & (step <= 0)][0])
            fail('similarity_items', f'row {row}: expected strictly increasing item '
                                     f'ids within a row')
    if not np.isfinite(values).all():
        at = int(np.flatnonzero(~np.isfinite(values))[0])
        fail('similarity_values', f'entry {at} is NaN or inf; expected finite '
                                  f'weights')


def check_target(output: PathLike, overwrite: bool) -> None:
    """Raise unless an export may be written to ``output``: :class:`FileExistsError`
    when it holds one and ``overwrite`` is false, :class:`ExportError` when it is a
    file, one version of an export, or a non-empty directory that holds no export."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ExportError(f"'{output}' is a file; expected an export directory")
    if not output.is_dir():
        return
    if (output / MANIFEST).is_file() and not os.path.lexists(output / CURRENT):
        raise ExportError(f"'{output}' is one version of an export; write to the "
                          f"export directory that holds it (its '{VERSIONS}' folder's "
                          f"parent) or to a new directory")
    if _holds_export(output):
        if not overwrite:
            raise FileExistsError(f"'{output}' holds an export{_describe(output)}; "
                                  f"pass overwrite=True (--overwrite) to replace it")
        return
    others = sorted(p.name for p in output.iterdir())
    if others and others != [VERSIONS]:
        raise ExportError(f"'{output}' is not empty and holds no export (found: "
                          f"{', '.join(others[:5])}); choose a new or empty directory")


def _holds_export(output: Path) -> bool:
    return os.path.lexists(output / CURRENT) or (output / MANIFEST).is_file()


def _describe(output: Path) -> str:
    try:
        m = json.loads((resolve_export(output) / MANIFEST).read_text())
        return f" (version {m['id']} of model {m['model']['name']!r}, created " \
               f"{m['created_at']})"
    except Exception:  # noqa: BLE001 - only a description
        return ''


def _publish(output: Path, version: str, overwrite: bool) -> None:
    """Point ``output/current`` at ``versions/version`` in one atomic step."""
    link = output / CURRENT
    target = os.path.join(VERSIONS, version)
    if not overwrite:
        try:
            os.symlink(target, link)  # fails if another export got there first
        except FileExistsError:
            raise FileExistsError(f"'{output}' holds an export{_describe(output)} "
                                  f"(written while this one was); pass "
                                  f"overwrite=True (--overwrite) to replace it"
                                  ) from None
        return
    tmp = output / f'.{CURRENT}.{secrets.token_hex(4)}.tmp'
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def list_versions(output: PathLike) -> list:
    """The version directories in ``output/versions``, oldest first."""
    folder = Path(output) / VERSIONS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir()
                   if p.is_dir() and not p.name.startswith('.')), key=lambda p: p.name)


def _prune(output: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` versions (never the published one)."""
    try:
        current = resolve_export(output).name
    except ExportError:
        return
    versions = [p for p in list_versions(output) if p.name != current]
    for old in versions[:max(0, len(versions) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------
def resolve_export(path: PathLike) -> Path:
    """The version directory ``path`` names now: the target of ``path/current``, or
    ``path`` itself when it is a version directory (holds ``manifest.json``)."""
    path = Path(path)
    link = path / CURRENT
    if os.path.lexists(link):
        target = Path(os.path.realpath(link))
        if not (target / MANIFEST).is_file():
            raise ExportError(f"'{link}' points to '{target}', which holds no "
                              f"{MANIFEST}; expected a complete export version")
        return target
    if (path / MANIFEST).is_file():
        return path
    if not path.exists():
        raise ExportError(f"'{path}': export directory not found")
    raise ExportError(f"'{path}': no export found (expected '{CURRENT}' or "
                      f"'{MANIFEST}', as `mambarec export` writes)")


def load_export(path: PathLike, verify: bool = True) -> Export:
    """Read the export ``path`` names (:func:`resolve_export`) into memory.

    ``verify`` checks each file against the sha256 in the manifest. All arrays are
    read-only. Raises :class:`ExportError` naming the file at fault.
    """
    directory = resolve_export(path)
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f'{manifest_path}: not a readable manifest ({e})') from None
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        found = manifest.get('format') if isinstance(manifest, dict) else None
        raise ExportError(f'{manifest_path}: expected format {FORMAT!r}, got '
                          f'{found!r}')
    for key in ('id', 'score_function', 'files', 'embedding_dim'):
        if key not in manifest:
            raise ExportError(f'{manifest_path}: field {key!r} is missing')
    if manifest['score_function'] not in SCORE_FUNCTIONS:
        raise ExportError(f"{manifest_path}: score_function "
                          f"{manifest['score_function']!r} is not supported "
                          f"(expected one of {SCORE_FUNCTIONS})")
    files = manifest['files']
    arrays = {}
    for name in SCORE_ARRAYS[manifest['score_function']]:
        file, dtype, _ = ARRAYS[name]
        raw = _read_file(directory, file, files, verify)
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ExportError(f'{directory / file}: not a readable .npy array '
                              f'({e})') from None
        if array.dtype != np.dtype(dtype):
            raise ExportError(f'{directory / file}: expected dtype {dtype}, got '
                              f'{array.dtype}')
        array.setflags(write=False)
        arrays[name] = array
    ids = {}
    for file in (USER_IDS, ITEM_IDS):
        ids[file] = None
        if file in files:
            raw = _read_file(directory, file, files, verify)
            try:
                values = json.loads(raw.decode('utf-8'))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ExportError(f'{directory / file}: not a JSON list of ids '
                                  f'({e})') from None
            if not isinstance(values, list):
                raise ExportError(f'{directory / file}: expected a JSON list of ids')
            ids[file] = tuple(values)
    _check_arrays(arrays, ids[USER_IDS], ids[ITEM_IDS], where=str(directory))
    if 'item_embeddings' in arrays and \
            arrays['item_embeddings'].shape[1] != manifest['embedding_dim']:
        raise ExportError(f"{manifest_path}: embedding_dim "
                          f"{manifest['embedding_dim']} differs from the embeddings' "
                          f"width {arrays['item_embeddings'].shape[1]}")
    return Export(directory, manifest, user_ids=ids[USER_IDS], item_ids=ids[ITEM_IDS],
                  **arrays)


def _read_file(directory: Path, file: str, files: Mapping[str, Any],
               verify: bool) -> bytes:
    path = directory / file
    if file not in files:
        raise ExportError(f'{directory / MANIFEST}: no entry for {file}')
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f'{path}: missing (listed in the manifest)') from None
    except OSError as e:
        raise ExportError(f'{path}: cannot be read ({e.strerror or e})') from None
    if verify and hashlib.sha256(raw).hexdigest() != files[file].get('sha256'):
        raise ExportError(f'{path}: sha256 differs from the manifest; the file is '
                          f'damaged or was changed after the export')
    return raw
