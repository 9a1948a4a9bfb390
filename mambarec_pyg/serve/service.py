r"""The recommendation service without HTTP: requests in, answers or errors out.

A :class:`Service` holds one immutable :class:`Snapshot` of an export (the arrays,
read-only; the indexes; the most-popular list; the id lookups). Every request reads
the snapshot reference once and answers from that object alone, so a
:meth:`Service.reload`, which builds a new snapshot and then swaps the reference in
one assignment, never changes an answer half-way: requests in flight finish on the
old export, later ones see the new one. Nothing else is shared or written per
request.

Answers (:mod:`mambarec_pyg.serve.app` sends them as JSON):

* a known user: the top-:math:`k` items by :math:`\langle e_u, e_i\rangle` (training
  items excluded unless ``exclude_seen`` is false), ``"known": true, "source":
  "model"``; ties by smaller item id (:mod:`mambarec_pyg.serve.index`);
* an unknown user (an id the export does not have): the most popular items (by
  distinct training users, ties by smaller item id), ``"known": false, "source":
  "popularity"``, the scores being the counts;
* similar items: the top-:math:`k` items by the cosine of the final item embeddings,
  the item itself excluded; for an export of score function ``'sparse_dot'``
  (content-based item kNN), the item's stored neighbours by their weight
  :math:`\mathbf{W}_{ij}` (at most the model's ``knn_k``);
* score function ``'sparse_dot'``: a known user's scores sum the item-item weights
  over the user's training items (:class:`~mambarec_pyg.serve.index.SparseDotIndex`),
  always exactly (a faiss ``index`` option does not apply and is logged);
* ``k`` larger than the candidates returns all candidates.

Ids are the export's: external strings when it holds id maps, otherwise the
internal integer ids (``manifest['ids']`` says which). Bad input raises
:class:`RequestError` with an HTTP status and the field at fault.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .config import ServeConfig
from .export import Export, load_export, resolve_export
from .index import SparseDotIndex, make_index, normalize_rows

__all__ = ['Service', 'Snapshot', 'RequestError']

logger = logging.getLogger('mambarec_pyg.serve')

_INT_RE = re.compile(r'-?[0-9]+')
_INT64_MAX = 2**63 - 1
#: Longest external id accepted.
MAX_ID_LENGTH = 256
#: ``k`` of a request that gives none.
DEFAULT_K = 20
_TRUE, _FALSE = ('true', '1', 'yes'), ('false', '0', 'no')
_GET_RECOMMEND = ('user', 'k', 'exclude_seen')
_POST_RECOMMEND = ('users', 'k', 'exclude_seen')
_GET_SIMILAR = ('item', 'k')

#: A parsed id: ``(the id as the client gave it, the internal id or None)``.
ParsedId = Tuple[Union[int, str], Optional[int]]


class RequestError(Exception):
    """A request the service cannot answer: HTTP ``status``, the ``field`` at fault
    (``None`` for the request as a whole) and a message saying what was expected."""

    def __init__(self, status: int, field: Optional[str], message: str) -> None:
        super().__init__(f'{field}: {message}' if field else message)
        self.status, self.field, self.message = status, field, message

    def as_dict(self) -> Dict[str, Any]:
        return {'error': {'field': self.field, 'message': self.message,
                          'status': self.status}}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds').replace(
        '+00:00', 'Z')


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One export ready to answer: built once, never modified."""

    export: Export
    index: Any
    similar_index: Any
    popular_items: np.ndarray
    popular_scores: np.ndarray
    user_lookup: Optional[Dict[str, int]]
    item_lookup: Optional[Dict[str, int]]
    loaded_at: str

    @property
    def id(self) -> str:
        return self.export.id

    @property
    def sparse(self) -> bool:
        """Score function ``'sparse_dot'`` (else ``'dot'``)."""
        return self.export.score_function == 'sparse_dot'

    def queries(self, users: np.ndarray):
        """The index's queries of internal user ids ``users``: their embeddings, or
        their training items (``'sparse_dot'``)."""
        if self.sparse:
            return [self.export.seen(int(u)) for u in users]
        return self.export.user_embeddings[users]

    @classmethod
    def build(cls, export: Export, config: ServeConfig) -> 'Snapshot':
        """Indexes, most-popular list and id lookups for ``export``."""
        if export.score_function == 'sparse_dot':
            if config.index != 'exact':
                logger.warning('export %s has score function sparse_dot: index %r '
                               'does not apply; ranking exactly', export.id,
                               config.index)
            index = SparseDotIndex(export.similarity_rowptr, export.similarity_items,
                                   export.similarity_values, config.block_elements)
            similar = index
        else:
            options = dict(block_elements=config.block_elements,
                           hnsw_m=config.hnsw_m,
                           ef_construction=config.hnsw_ef_construction,
                           ef_search=config.hnsw_ef_search)
            index = make_index(config.index, export.item_embeddings, **options)
            similar = make_index(config.index,
                                 normalize_rows(export.item_embeddings), **options)
        pop = export.item_popularity
        order = np.lexsort((np.arange(pop.size), -pop))[:config.max_k]
        popular_items = order.astype(np.int64)
        popular_scores = pop[order].astype(np.float64)
        for a in (popular_items, popular_scores):
            a.setflags(write=False)
        lookups = [None if ids is None else {v: i for i, v in enumerate(ids)}
                   for ids in (export.user_ids, export.item_ids)]
        return cls(export, index, similar, popular_items, popular_scores,
                   lookups[0], lookups[1], _now())


class Service:
    """Recommendations from the export directory ``directory``.

    Args:
        directory: an export directory (``mambarec export --output DIR``) or one
            version of it.
        config (ServeConfig, optional): index and limits (defaults otherwise).

    Raises:
        ExportError: no readable export (naming the file).
        ImportError: a faiss index without faiss installed.
    """

    def __init__(self, directory: Union[str, Path],
                 config: Optional[ServeConfig] = None) -> None:
        self.directory = Path(directory)
        self.config = config or ServeConfig()
        self._reload_lock = threading.Lock()
        self._snapshot = Snapshot.build(load_export(self.directory), self.config)
        self.started = time.monotonic()
        logger.info('serving export %s (model %s) from %s', self._snapshot.id,
                    self._snapshot.export.manifest.get('model', {}).get('name'),
                    self._snapshot.export.path)

    @property
    def default_k(self) -> int:
        """``k`` of a request that gives none: 20, or ``max_k`` when smaller."""
        return min(DEFAULT_K, self.config.max_k)

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot requests are answered from now (read it once per request)."""
        return self._snapshot

    # -- reload ------------------------------------------------------------------------
    def reload(self) -> Dict[str, Any]:
        """Load the export ``directory`` names now and swap it in; return
        ``{'reloaded', 'export', 'previous'}``. A version already served is not
        loaded again. On failure the current snapshot stays and the
        :class:`~mambarec_pyg.serve.export.ExportError` propagates."""
        with self._reload_lock:
            old = self._snapshot
            target = resolve_export(self.directory)
            if target == old.export.path:
                return {'reloaded': False, 'export': old.id, 'previous': old.id}
            new = Snapshot.build(load_export(target), self.config)
            self._snapshot = new  # one reference assignment: atomic for readers
            logger.info('reloaded: now serving export %s (was %s)', new.id, old.id)
            return {'reloaded': True, 'export': new.id, 'previous': old.id}

    # -- endpoints -----------------------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        snap = self.snapshot
        m = snap.export.manifest
        return {'status': 'ok', 'export': snap.id,
                'model': m.get('model', {}).get('name'),
                'num_users': snap.export.num_users, 'num_items': snap.export.num_items,
                'created_at': m.get('created_at'), 'loaded_at': snap.loaded_at,
                'uptime_s': round(time.monotonic() - self.started, 3)}

    def metadata(self) -> Dict[str, Any]:
        snap = self.snapshot
        c = self.config
        return {'export': snap.id, 'path': str(snap.export.path),
                'manifest': snap.export.manifest,
                'serving': {'index': snap.index.kind,
                            'similar': ('item-item weights of the model'
                                        if snap.sparse else
                                        'cosine of item embeddings'),
                            'max_k': c.max_k, 'max_batch': c.max_batch,
                            'max_body_bytes': c.max_body_bytes,
                            'ids': snap.export.manifest.get('ids'),
                            'loaded_at': snap.loaded_at}}

    def recommend_query(self, params: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
        """``GET /recommend?user=ID&k=20&exclude_seen=true``."""
        snap = self.snapshot
        q = _query(params, _GET_RECOMMEND)
        if 'user' not in q:
            raise RequestError(422, 'user', 'required: the user to recommend for')
        user = _parse_id(q['user'], snap.user_lookup, snap.export.num_users, 'user')
        k = self._k(q.get('k', str(self.default_k)), 'k')
        exclude = _parse_bool(q.get('exclude_seen', 'true'), 'exclude_seen')
        result = self._recommend(snap, [user], k, exclude)[0]
        return dict(result, export=snap.id)

    def recommend_batch(self, body: bytes) -> Dict[str, Any]:
        """``POST /recommend`` with ``{"users": [...], "k": 20, "exclude_seen":
        true}``: one result per entry of ``users``, in order (repeats answered
        again), all from one snapshot."""
        snap = self.snapshot
        try:
            doc = json.loads(body, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise RequestError(400, 'body', f'malformed JSON ({reason}); expected '
                                            f'{{"users": [...], "k": 20}}') from None
        if not isinstance(doc, dict):
            raise RequestError(422, 'body', f'expected a JSON object {{"users": '
                                            f'[...], "k": 20}}, got '
                                            f'{type(doc).__name__}')
        unknown = [key for key in doc if key not in _POST_RECOMMEND]
        if unknown:
            raise RequestError(422, str(unknown[0]), f'unknown field (expected '
                                                     f'{", ".join(_POST_RECOMMEND)})')
        if 'users' not in doc:
            raise RequestError(422, 'users', 'required: a list of user ids')
        users = doc['users']
        if not isinstance(users, list):
            raise RequestError(422, 'users', f'expected a list of user ids, got '
                                             f'{type(users).__name__}')
        if not 1 <= len(users) <= self.config.max_batch:
            raise RequestError(422, 'users', f'expected 1 to {self.config.max_batch} '
                                             f'user ids per request, got '
                                             f'{len(users)}')
        k = self._k(doc.get('k', self.default_k), 'k', text=False)
        exclude = doc.get('exclude_seen', True)
        if not isinstance(exclude, bool):
            raise RequestError(422, 'exclude_seen', f'expected true or false, got '
                                                    f'{json.dumps(exclude)}')
        parsed = [_parse_id(u, snap.user_lookup, snap.export.num_users, f'users[{n}]')
                  for n, u in enumerate(users)]
        return {'export': snap.id, 'k': k, 'exclude_seen': exclude,
                'results': self._recommend(snap, parsed, k, exclude)}

    def similar_query(self, params: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
        """``GET /similar?item=ID&k=20``."""
        snap = self.snapshot
        q = _query(params, _GET_SIMILAR)
        if 'item' not in q:
            raise RequestError(422, 'item', 'required: the item to find similar '
                                            'items for')
        echo, item = _parse_id(q['item'], snap.item_lookup, snap.export.num_items,
                               'item')
        if item is None:
            raise RequestError(404, 'item', f'unknown item {echo!r} (the export has '
                                            f'{snap.export.num_items} items)')
        k = self._k(q.get('k', str(self.default_k)), 'k')
        if snap.sparse:
            items, scores = snap.similar_index.neighbours(item, k)
        else:
            query = snap.similar_index.items[item:item + 1]
            items, scores = snap.similar_index.search(
                query, k, [np.asarray([item], dtype=np.int64)])[0]
        return {'item': echo, 'items': _item_ids(snap, items),
                'scores': scores.tolist(), 'export': snap.id}

    # -- helpers -------------------------------------------------------------------------
    def _k(self, raw: Any, field: str, text: bool = True) -> int:
        """``k`` from a query string (``text``) or a JSON number."""
        high = self.config.max_k
        if text and isinstance(raw, str):
            value = int(raw) if _INT_RE.fullmatch(raw.strip()) and \
                len(raw.strip()) <= 20 else None
        else:
            value = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        if value is None or not 1 <= value <= high:
            shown = repr(raw) if isinstance(raw, str) else json.dumps(raw)
            raise RequestError(422, field, f'expected an integer in [1, {high}], got '
                                           f'{shown}')
        return value

    def _recommend(self, snap: Snapshot, users: Sequence[ParsedId], k: int,
                   exclude_seen: bool) -> List[Dict[str, Any]]:
        known = [u for _, u in users if u is not None]
        answers: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        if known:
            ids = np.unique(np.asarray(known, dtype=np.int64))
            exclude = [snap.export.seen(int(u)) for u in ids] if exclude_seen else None
            found = snap.index.search(snap.queries(ids), k, exclude)
            answers = dict(zip(ids.tolist(), found))
        out = []
        for echo, u in users:
            if u is None:
                items, scores = snap.popular_items[:k], snap.popular_scores[:k]
                out.append({'user': echo, 'known': False, 'source': 'popularity',
                            'items': _item_ids(snap, items),
                            'scores': scores.tolist()})
            else:
                items, scores = answers[u]
                out.append({'user': echo, 'known': True, 'source': 'model',
                            'items': _item_ids(snap, items),
                            'scores': scores.tolist()})
        return out


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object's fields, refusing one given twice (as a query parameter is)."""
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RequestError(422, key, 'given more than once')
        out[key] = value
    return out


def _item_ids(snap: Snapshot, items: np.ndarray) -> list:
    if snap.export.item_ids is None:
        return items.tolist()
    ids = snap.export.item_ids
    return [ids[i] for i in items.tolist()]


def _query(params: Sequence[Tuple[str, str]], allowed: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for key, value in params:
        if key not in allowed:
            raise RequestError(422, key, f'unknown query parameter (expected '
                                         f'{", ".join(allowed)})')
        if key in out:
            raise RequestError(422, key, 'given more than once')
        out[key] = value
    return out


def _parse_bool(raw: str, field: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise RequestError(422, field, f'expected true or false, got {raw!r}')


def _parse_id(raw: Any, lookup: Optional[Mapping[str, int]], count: int,
              field: str) -> ParsedId:
    """``(echo, internal id or None when unknown)`` of a user or item id."""
    if lookup is not None:  # external ids: strings
        if not isinstance(raw, str):
            raise RequestError(422, field, f'expected a string id (this export has '
                                           f'external ids), got {json.dumps(raw)}')
        if not raw or len(raw) > MAX_ID_LENGTH:
            raise RequestError(422, field, f'expected a non-empty id of at most '
                                           f'{MAX_ID_LENGTH} characters')
        return raw, lookup.get(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if not _INT_RE.fullmatch(text) or len(text) > 20:
            raise RequestError(422, field, f'expected a non-negative integer id, got '
                                           f'{raw!r}')
        value = int(text)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        raise RequestError(422, field, f'expected a non-negative integer id, got '
                                       f'{json.dumps(raw)}')
    if value < 0:
        raise RequestError(422, field, f'expected a non-negative integer id, got '
                                       f'{value}')
    if value > _INT64_MAX:
        raise RequestError(422, field, f'expected an id below 2**63, got {value}')
    return value, (value if value < count else None)
