r"""Reading and writing datasets in the MMRec format.

The MMRec framework (which the released MambaRec is built on) stores one dataset per
directory ``root/<name>/``:

* ``<name>.inter`` -- a tab-separated interaction table with the header
  ``userID  itemID  rating  timestamp  x_label``. Ids are dense integers
  (``0..U-1`` and ``0..N-1``); ``x_label`` is ``0`` for a training interaction,
  ``1`` for validation and ``2`` for test (a per-user random 8:1:1 split of a 5-core
  filtered set). Only ``userID``, ``itemID`` and ``x_label`` are used; ``rating`` and
  ``timestamp`` may be absent. These three fields must be written canonically, as
  MMRec writes them: plain decimal digits without sign, leading zeros, spaces,
  quotes, decimal point or exponent (``3``, not ``+3``, ``03``, ``3.0`` or ``3e0``),
  and ids below :math:`2^{63}`; anything else is refused with the file, line, column
  and text, rather than read as some integer.
* ``<modality>_feat.npy`` -- one float array ``[N, D_m]`` per item modality, row ``i``
  belonging to item ``i`` (the paper's files are ``image_feat.npy``, 4096-d VGG16 fc7
  features, and ``text_feat.npy``, 384-d sentence embeddings).

Following MMRec's conventions, the number of users ``U`` and items ``N`` are the
largest id plus one over the whole file, and users without any training interaction
are left out of validation and test (they cannot be scored by a model that learns from
training interactions only).

:func:`load_mmrec` turns such a directory into a :class:`~torch_geometric.data.HeteroData`
with node types ``'user'`` and ``'item'``, one float32 feature store per modality on
``'item'``, training edges ``data['user', 'interacts', 'item'].edge_index`` for message
passing, and supervision edges in PyG's ``edge_label_index`` convention
(``valid_edge_label_index``, ``test_edge_label_index``). :func:`write_mmrec` writes one
back; a write either completes or leaves nothing behind.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from ..io import atomic_directory, atomic_path
from ..utils import did_you_mean
from .errors import DataError, DataWarning
from .index import UI

PathLike = Union[str, os.PathLike]

#: Columns of an MMRec ``.inter`` file, in the order :func:`write_mmrec` writes them.
INTER_COLUMNS: Tuple[str, ...] = ('userID', 'itemID', 'rating', 'timestamp', 'x_label')
#: Columns :func:`load_mmrec` needs.
REQUIRED_COLUMNS: Tuple[str, ...] = ('userID', 'itemID', 'x_label')
#: ``x_label`` value of each split.
SPLIT_LABELS: Dict[str, int] = {'train': 0, 'valid': 1, 'test': 2}
#: Suffix of an item-feature file: ``<modality>_feat.npy``.
FEATURE_SUFFIX = '_feat.npy'

# Attribute names of the item store a modality may not take.
_RESERVED = frozenset({'num_nodes', 'topic', 'x', 'node_id'})
# A canonical non-negative decimal integer: digits only, no leading zero.
_INT_RE = re.compile(r'0|[1-9][0-9]*')
_INT64_MAX = 2**63 - 1
# Ids with more digits than this are checked line by line (int64 has 19 digits).
_FAST_ID_DIGITS = 18
_ID_FORM = ('ids are plain decimal digits: no sign, spaces, quotes, decimal point, '
            'exponent or leading zeros')
_NPY_MAGIC = b'\x93NUMPY'
_NPY_EXPECTED = ('expected a .npy array of numbers [items, dim], as numpy.save '
                 'writes one from a float array')
# Largest id accepted per interaction row (dense ids give at most one per row).
_MAX_ID_FACTOR = 10


# ---------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------
def load_mmrec(root: PathLike, name: str,
               modalities: Optional[Sequence[str]] = None,
               verbose: bool = False, feature_dtype: str = 'float32') -> HeteroData:
    r"""Load the MMRec dataset ``root/name/`` as a :class:`HeteroData`.

    Args:
        root: the directory holding one folder per dataset.
        name: the dataset's folder, which holds ``<name>.inter`` and the
            ``<modality>_feat.npy`` files.
        modalities: which feature files to load, by modality name, in this order;
            ``None`` loads every ``*_feat.npy`` in sorted order (``('image', 'text')``
            for the paper's files).
        verbose: print the dataset summary (:func:`~mambarec_pyg.data.summarize`).
        feature_dtype: ``'float32'`` (default) or ``'float16'`` (half the memory of
            the feature tables; see :func:`read_features`).

    Returns:
        ``data`` with ``data['user'].num_nodes = U``, ``data['item'].num_nodes = N``,
        ``data['item'][m]`` a float32 ``[N, D_m]`` tensor per modality ``m``,
        ``data.modalities`` the modality names in order, ``data.name``,
        ``data[UI].edge_index`` the training interactions ``[2, E_train]`` (row 0 users,
        row 1 items, file order), ``data[UI].valid_edge_label_index`` and
        ``data[UI].test_edge_label_index`` the supervision edges,
        ``data.num_dropped_eval_users = {'valid': a, 'test': b}`` and
        ``data.processed_dir`` (``root/name/processed``, where the graph transforms
        cache what they compute).

    Raises:
        DataError: a missing file or column, a malformed value (with its line), or
            features that do not match the items.

    Duplicate ``(userID, itemID)`` pairs are dropped (the first one kept) and users
    without a training interaction are left out of validation and test; both emit a
    :class:`~mambarec_pyg.data.errors.DataWarning` saying how many.
    """
    directory = Path(root) / name
    if not directory.is_dir():
        hint = ''
        if Path(root).is_dir():
            found = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
            hint = did_you_mean(name, found) or (
                f"; found: {', '.join(found)}" if found else '')
        raise DataError(f"dataset directory '{directory}' not found{hint}")
    inter = directory / f'{name}.inter'
    if not inter.is_file():
        others = sorted(p.name for p in directory.glob('*.inter'))
        hint = f"; found: {', '.join(others)}" if others else ''
        raise DataError(f"interaction file '{inter}' not found (expected "
                        f"'<name>/<name>.inter'){hint}")
    feature_files = _select_modalities(directory, modalities)

    users, items, labels = read_inter(inter)
    num_users = int(users.max()) + 1
    num_items = int(items.max()) + 1
    users, items, labels = _drop_duplicates(inter, users, items, labels, num_items)
    train = labels == SPLIT_LABELS['train']
    if not train.any():
        raise DataError(f"{inter}: the training split is empty (no row with x_label "
                        f"0); expected at least one training interaction")

    data = HeteroData()
    data.name = name
    # Derived graphs are cached here, like a PyG dataset's processed files
    # (mambarec_pyg.data.transforms.apply_transforms).
    data.processed_dir = str(directory / 'processed')
    data['user'].num_nodes = num_users
    data['item'].num_nodes = num_items
    for modality, path in feature_files.items():
        data['item'][modality] = read_features(path, num_items, inter.name,
                                               dtype=feature_dtype)
    data.modalities = tuple(feature_files)

    has_train = np.zeros(num_users, dtype=bool)
    has_train[users[train]] = True
    store = data[UI]
    store.edge_index = _edges(users[train], items[train])
    dropped: Dict[str, int] = {}
    dropped_edges: Dict[str, int] = {}
    for split in ('valid', 'test'):
        mask = labels == SPLIT_LABELS[split]
        keep = mask & has_train[users]
        gone = mask & ~keep
        dropped[split] = int(np.unique(users[gone]).size)
        dropped_edges[split] = int(gone.sum())
        store[f'{split}_edge_label_index'] = _edges(users[keep], items[keep])
    data.num_dropped_eval_users = dropped
    if any(dropped.values()):
        warnings.warn(
            f"{inter}: users without a training interaction left out of evaluation: "
            f"{dropped['valid']} from valid ({dropped_edges['valid']} interactions), "
            f"{dropped['test']} from test ({dropped_edges['test']} interactions)",
            DataWarning, stacklevel=2)
    if verbose:
        from .summary import summarize
        print(summarize(data))
    return data


def read_inter(path: PathLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check an MMRec ``.inter`` file (UTF-8 text, each column named once
    in the header).

    Returns the ``userID``, ``itemID`` and ``x_label`` columns as ``int64`` arrays in
    file order. The fast path reads the file once, checks the field count of every
    line and the canonical form of the three fields in one vectorised pass over the
    bytes (:func:`_canonical_fields`; pandas alone would read ``+3``, ``3.0`` or
    ``1e1`` as integers and overflow on 20-digit ids), and parses the three columns
    with pandas and fixed integer dtypes; only when that fails, or a value is out of
    range, is the file scanned line by line to report the first offending line
    (1-based, the header being line 1).
    """
    path = Path(path)
    try:
        return _read_inter(path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _read_inter(path: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    header = _read_header(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        extra = [c for c in header if c not in INTER_COLUMNS]
        hints = '; '.join(f"'{m}' not found{did_you_mean(m, extra or header)}"
                          for m in missing)
        raise DataError(
            f"{path.name}: line 1 (header): expected tab-separated columns "
            f"{', '.join(INTER_COLUMNS)} ({', '.join(REQUIRED_COLUMNS)} required), "
            f"found {header!r}: {hints}")
    raw = path.read_bytes()
    if not raw.isascii():
        raw.decode('utf-8')  # pandas may skip undecodable bytes in unused columns
    # Every line must have as many fields as the header (pandas ignores surplus fields
    # of columns it does not read), and pandas would read '+3', '3.0', '1e1' or ' 3'
    # as integers: one vectorised pass over the bytes checks both.
    if not _canonical_fields(raw, header):
        _scan_for_problem(path, header)  # blank lines are fine and raise nothing
    try:
        frame = pd.read_csv(io.BytesIO(raw), sep='\t', usecols=list(REQUIRED_COLUMNS),
                            dtype={c: np.int64 for c in REQUIRED_COLUMNS},
                            engine='c', na_filter=False)
    except (ValueError, TypeError, OverflowError, pd.errors.ParserError) as e:
        _scan_for_problem(path, header)
        raise DataError(f'{path.name}: could not be read as an MMRec interaction '
                        f'file: {e}') from None
    users = frame['userID'].to_numpy(dtype=np.int64)
    items = frame['itemID'].to_numpy(dtype=np.int64)
    labels = frame['x_label'].to_numpy(dtype=np.int64)
    if users.size == 0:
        raise DataError(f'{path.name}: no interactions after the header; the '
                        f'training split is empty')
    if users.min() < 0 or items.min() < 0 or labels.min() < 0 or labels.max() > 2:
        _scan_for_problem(path, header)
        raise DataError(f'{path.name}: a negative id or an x_label outside 0, 1, 2')
    # Ids are dense (MMRec numbers users and items from 0); a largest id far beyond the
    # number of rows means raw ids, and U = max id + 1 would be absurd.
    for column, ids in (('userID', users), ('itemID', items)):
        largest = int(ids.max())
        if largest >= _MAX_ID_FACTOR * ids.size + 1000:
            line = _line_of(path, header, column, largest)
            raise DataError(f"{path.name}: line {line}, column '{column}': id "
                            f"{largest} is far larger than the {ids.size} "
                            f"interactions; expected dense ids 0..n-1 (map raw ids "
                            f"to consecutive integers first)")
    return users, items, labels


FEATURE_DTYPES = ('float32', 'float16')


def read_features(path: PathLike, num_items: int, inter_name: str = '.inter',
                  dtype: str = 'float32') -> Tensor:
    """Read ``<modality>_feat.npy`` as a float32 (or, ``dtype='float16'``,
    float16) ``[num_items, D]`` tensor.

    The array is memory-mapped and copied once, converting to ``dtype`` on the way
    (so a float16 table never exists in float32 in memory; a value beyond float16's
    range, about 65504, is refused as non-finite).
    Finiteness is checked through one float64 sum (any NaN or inf makes it non-finite,
    and float32 values cannot overflow a float64 sum); only then are rows inspected.
    """
    path = Path(path)
    _check_regular_file(path)
    _check_npy(path)
    try:
        array = np.load(path, mmap_mode='r', allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        # numpy's message may advise enabling pickle, which is never right here
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if 'pickle' in reason.lower():
            reason = 'it does not hold a plain array of numbers'
        raise DataError(f'{path.name}: not a readable .npy array ({reason}); '
                        f'{_NPY_EXPECTED}') from None
    if array.ndim != 2:
        raise DataError(f'{path.name}: expected a 2-D array [items, dim], found '
                        f'shape {tuple(array.shape)}')
    if array.shape[0] != num_items:
        raise DataError(f'{path.name}: found {array.shape[0]} rows, expected '
                        f'{num_items} (one per item; the number of items is the '
                        f'largest itemID in {inter_name} plus one)')
    if not (np.issubdtype(array.dtype, np.floating)
            or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f'{path.name}: expected a float array, found dtype '
                        f'{array.dtype}')
    if array.shape[1] == 0:
        raise DataError(f'{path.name}: found 0 columns (shape {tuple(array.shape)}); '
                        f'expected at least one feature per item')
    if dtype not in FEATURE_DTYPES:
        raise DataError(f"feature dtype: expected one of {', '.join(FEATURE_DTYPES)}, "
                        f"got {dtype!r}")
    with np.errstate(over='ignore'):  # float16 overflow: refused just below
        features = torch.from_numpy(np.array(array, dtype=np.dtype(dtype),
                                              order='C'))
    del array
    if not torch.isfinite(features.sum(dtype=torch.float64)):
        bad = ~torch.isfinite(features).all(dim=1)
        if bad.any():
            rows = bad.nonzero().view(-1)
            range_hint = (' (or values beyond float16\'s range, about 65504: use '
                          'float32 features)' if dtype == 'float16' else '')
            raise DataError(f'{path.name}: {rows.numel()} rows contain NaN or inf'
                            f'{range_hint} (first bad row: {int(rows[0])}); expected '
                            f'finite features')
    return features


def _check_regular_file(path: Path) -> None:
    """Refuse, saying what it is, a feature entry that is not a regular file (a
    directory, a device such as ``/dev/zero``, a pipe that would block, a broken
    symbolic link); a symbolic link to a regular file is fine."""
    if path.is_file():
        return
    link = ''
    if path.is_symlink():
        target = os.readlink(path)
        if not path.exists():
            raise DataError(f'{path.name}: not a regular file: it is a broken '
                            f'symbolic link (to {target}); {_NPY_EXPECTED}')
        link = f' (through a symbolic link to {target})'
    if path.is_dir():
        what = 'a directory'
    elif path.is_char_device():
        what = 'a character device'
    elif path.is_block_device():
        what = 'a block device'
    elif path.is_fifo():
        what = 'a named pipe'
    elif path.is_socket():
        what = 'a socket'
    elif not path.exists():
        what = 'missing'
    else:
        what = 'not a plain file'
    raise DataError(f'{path.name}: not a regular file: it is {what}{link}; '
                    f'{_NPY_EXPECTED}')


def _check_npy(path: Path) -> None:
    """Refuse, saying what the file is, anything but a ``.npy`` array of plain values.

    Checks the signature and the header's dtype before numpy reads the data, so a text
    file, an archive or a pickle is named as such, and an array of Python objects
    (which only the unsafe pickle loader could read) is refused without loading it.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(64)
            dtype = _npy_dtype(f) if head.startswith(_NPY_MAGIC) else None
    except OSError as e:
        raise DataError(f'{path.name}: cannot be read ({e.strerror or e})') from None
    except ValueError as e:
        raise DataError(f'{path.name}: not a readable .npy array (damaged header: '
                        f'{str(e).splitlines()[0] if str(e) else "unreadable"}); '
                        f'{_NPY_EXPECTED}') from None
    if not head.startswith(_NPY_MAGIC):
        raise DataError(f'{path.name}: not a readable .npy array: '
                        f'{_describe_bytes(head)}; {_NPY_EXPECTED}')
    if dtype is not None and dtype.hasobject:
        raise DataError(f'{path.name}: holds an array of Python objects (dtype '
                        f'{dtype}), not numbers; {_NPY_EXPECTED}. Such a file is not '
                        f'read: loading it could run code stored in it')


def _npy_dtype(f) -> Optional[np.dtype]:
    """The dtype in the header of the open ``.npy`` file ``f`` (``None`` for a header
    version this does not parse; numpy checks it when loading)."""
    f.seek(0)
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    return read_header(f)[2] if read_header is not None else None


def _describe_bytes(head: bytes) -> str:
    """What the first bytes of a file that is not a ``.npy`` array look like."""
    if not head:
        return 'the file is empty'
    if head.startswith(b'PK'):
        return 'it is a zip archive (an .npz file?), not a single array'
    if head[:1] == b'\x80':
        return 'it is a Python pickle, not an array'
    text = head.decode('utf-8', errors='replace')
    if '\ufffd' not in text[:-3] and all(c.isprintable() or c in '\t\r\n'
                                         for c in text[:-3]):
        return f'it is a text file (it begins {text[:24]!r})'
    return 'it does not begin with the .npy signature'


def feature_files(directory: PathLike) -> Dict[str, Path]:
    """The ``<modality>_feat.npy`` entries in ``directory``, by modality, sorted.

    Every entry with that name counts, whatever it is: one that is not a readable
    regular file (a directory, a broken link, a link to ``/dev/zero``) is refused
    with its name when it is read (:func:`read_features`), never skipped.
    """
    directory = Path(directory)
    found = sorted(p for p in directory.iterdir()
                   if p.name.endswith(FEATURE_SUFFIX)
                   and len(p.name) > len(FEATURE_SUFFIX))
    return {p.name[:-len(FEATURE_SUFFIX)]: p for p in found}


def _select_modalities(directory: Path,
                       modalities: Optional[Sequence[str]]) -> Dict[str, Path]:
    found = feature_files(directory)
    if modalities is not None and len(modalities) == 0:
        return {}  # interactions only (BPR, LightGCN, most-popular)
    if not found:
        raise DataError(f"{directory}: no item feature files found; expected one "
                        f"'<modality>{FEATURE_SUFFIX}' per modality (e.g. "
                        f"image{FEATURE_SUFFIX}, text{FEATURE_SUFFIX}); for a model "
                        f"that uses no item features, load with modalities=[] "
                        f"(--data.modalities '')")
    if modalities is None:
        selected = list(found)
    else:
        selected = [modalities] if isinstance(modalities, str) else list(modalities)
        for m in selected:
            if m not in found:
                raise DataError(f"{directory}: modality '{m}' not found (no "
                                f"'{m}{FEATURE_SUFFIX}'){did_you_mean(m, found)}; "
                                f"found: {', '.join(found)}")
        if len(set(selected)) != len(selected):
            raise DataError(f'{directory}: modalities listed twice in {selected}')
    for m in selected:
        if m in _RESERVED or not m.isidentifier():
            raise DataError(f"{found[m].name}: modality name '{m}' cannot be used; "
                            f'expected an identifier other than '
                            f"{', '.join(sorted(_RESERVED))}")
    return {m: found[m] for m in selected}


def _read_header(path: Path) -> List[str]:
    with open(path, 'r', encoding='utf-8', newline='') as f:
        line = f.readline()
    line = line.rstrip('\r\n').lstrip('\ufeff')
    if not line.strip():
        raise DataError(f'{path.name}: line 1: empty; expected the tab-separated '
                        f"header {' '.join(INTER_COLUMNS)}")
    header = line.split('\t')
    for i, column in enumerate(header):
        if column in header[:i]:
            raise DataError(f"{path.name}: line 1 (header): column '{column}' "
                            f'appears twice (fields {header.index(column) + 1} and '
                            f'{i + 1}); expected each column once')
    return header


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8 text, naming the first bad line."""
    raw = path.read_bytes()
    try:
        raw.decode('utf-8')
    except UnicodeDecodeError as e:
        line = raw.count(b'\n', 0, e.start) + 1
        return DataError(f'{path.name}: line {line}: byte 0x{raw[e.start]:02x} is not '
                         f'UTF-8 text; expected a UTF-8 (or ASCII) tab-separated file')
    return DataError(f'{path.name}: not UTF-8 text; expected a UTF-8 (or ASCII) '
                     f'tab-separated file')


def _canonical_fields(raw: bytes, header: List[str]) -> bool:
    """Whether every non-blank line after the header of ``raw`` has as many
    tab-separated fields as ``header``, with ``userID`` and ``itemID`` canonical ids
    of at most :data:`_FAST_ID_DIGITS` digits and ``x_label`` one of ``0``, ``1``,
    ``2``.

    One vectorised pass over the bytes (a CR before an LF is a line ending); ``False``
    sends :func:`read_inter` to the line-by-line :func:`_scan_for_problem`, which names
    the offending line.
    """
    first = raw.find(b'\n')
    if first < 0:
        return True  # the header alone
    body = np.frombuffer(raw, dtype=np.uint8)[first + 1:]
    if body.size == 0:
        return True
    if (body == 13).any():
        crlf = (body == 13) & np.append(body[1:] == 10, True)
        body = body[~crlf]
    newlines = np.flatnonzero(body == 10)
    ends = newlines if body[-1] == 10 else np.append(newlines, body.size)
    starts = np.concatenate(([0], newlines + 1))[:ends.size]
    filled = ends > starts  # blank lines are skipped, as pandas does
    starts, ends = starts[filled], ends[filled]
    tabs = np.flatnonzero(body == 9)
    width = len(header) - 1
    if tabs.size != width * starts.size:
        return False
    # as many tabs as lines times fields - 1, and line j's share of them within it
    grid = tabs.reshape(starts.size, width)
    if width and not ((grid[:, 0] >= starts).all() and (grid[:, -1] < ends).all()):
        return False
    field_start = np.concatenate([starts[:, None], grid + 1], axis=1)
    field_end = np.concatenate([grid, ends[:, None]], axis=1)
    required = [header.index(c) for c in REQUIRED_COLUMNS]
    # bytes other than digits, tabs and newlines, and the field each lies in
    other = np.flatnonzero(((body - np.uint8(48)) > 9) & (body != 9) & (body != 10))
    if other.size:
        line = np.searchsorted(ends, other)
        column = np.searchsorted(tabs, other) - line * width
        if np.isin(column, required).any():
            return False
    for name, c in zip(REQUIRED_COLUMNS, required):
        s, e = field_start[:, c], field_end[:, c]
        length = e - s
        if (length < 1).any():
            return False
        lead = body[s]
        if name == 'x_label':
            ok = (length == 1) & (lead <= ord('2'))
        else:
            ok = ((lead != ord('0')) | (length == 1)) & (length <= _FAST_ID_DIGITS)
        if not ok.all():
            return False
    return True


def _scan_for_problem(path: Path, header: List[str]) -> None:
    """Raise a :class:`DataError` naming the first bad line of ``path``, if any.

    The slow path behind :func:`read_inter`: plain Python over the raw lines, so the
    reported line numbers are exact (blank lines counted, as an editor would).
    """
    cols = {c: header.index(c) for c in REQUIRED_COLUMNS}
    with open(path, 'r', encoding='utf-8', newline='') as f:
        f.readline()
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip('\r\n')
            if not line.strip():
                continue
            fields = line.split('\t')
            if len(fields) != len(header):
                raise DataError(f'{path.name}: line {lineno}: expected '
                                f'{len(header)} tab-separated fields as in the '
                                f'header, found {len(fields)}')
            for column in ('userID', 'itemID'):
                value = fields[cols[column]]
                if not _INT_RE.fullmatch(value):
                    raise DataError(f"{path.name}: line {lineno}, column '{column}': "
                                    f'expected a non-negative integer id, got '
                                    f'{value!r} ({_ID_FORM})')
                if int(value) > _INT64_MAX:
                    raise DataError(f"{path.name}: line {lineno}, column '{column}': "
                                    f'id {value} is too large (at most 2**63 - 1); '
                                    f'expected dense ids 0..n-1 (map raw ids to '
                                    f'consecutive integers first)')
            value = fields[cols['x_label']]
            if value not in ('0', '1', '2'):
                raise DataError(f"{path.name}: line {lineno}, column 'x_label': "
                                f'expected 0 (train), 1 (valid) or 2 (test), got '
                                f'{value!r}')


def _line_of(path: Path, header: List[str], column: str, value: int) -> int:
    """The first line (1-based) whose ``column`` holds ``value``."""
    col = header.index(column)
    with open(path, 'r', encoding='utf-8', newline='') as f:
        f.readline()
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip('\r\n').split('\t')
            if len(fields) > col and _INT_RE.fullmatch(fields[col]) and int(
                    fields[col]) == value:
                return lineno
    return 0


def _drop_duplicates(path: Path, users: np.ndarray, items: np.ndarray,
                     labels: np.ndarray, num_items: int):
    key = users * num_items + items
    _, first = np.unique(key, return_index=True)
    if first.size == key.size:
        return users, items, labels
    warnings.warn(f'{path}: dropped {key.size - first.size} duplicate (userID, itemID) '
                  f'interactions, keeping the first occurrence of each', DataWarning,
                  stacklevel=3)
    keep = np.sort(first)
    return users[keep], items[keep], labels[keep]


def _edges(users: np.ndarray, items: np.ndarray) -> Tensor:
    return torch.from_numpy(np.stack([users, items]).astype(np.int64, copy=False))


# ---------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------
def write_mmrec(data: HeteroData, root: PathLike, name: str, *,
                overwrite: bool = False,
                extra_files: Optional[Mapping[str, Union[str, bytes, np.ndarray]]] = None
                ) -> Path:
    r"""Write ``data`` as the MMRec dataset ``root/name/``; return that directory.

    Writes ``<name>.inter`` (training edges, then validation, then test, each in its
    stored order; ``rating`` written as ``1.0`` and ``timestamp`` as ``0``, since the
    data object keeps neither) and one ``<modality>_feat.npy`` (float32) per entry of
    ``data.modalities``. :func:`load_mmrec` on the result gives back identical tensors.

    ``extra_files`` are written into the same directory in the same step: text,
    bytes, or arrays (saved as ``.npy``); their names may not clash with the format's.

    The directory is assembled under a temporary name next to its destination (each
    file through :func:`mambarec_pyg.io.atomic_path`) and renamed into place at the
    end, so a failure leaves nothing behind.

    Raises:
        FileExistsError: ``root/name`` exists and ``overwrite`` is false.
        DataError: ``data`` cannot be represented in the format (for instance a last
            user without interactions, since the format derives ``U`` from the ids).
    """
    directory = Path(root) / name
    table, modalities = _inter_table(data)
    features = {m: data['item'][m] for m in modalities}
    extra_files = dict(extra_files or {})
    for file in extra_files:
        if (file == f'{name}.inter' or file.endswith(FEATURE_SUFFIX)
                or Path(file).name != file):
            raise ValueError(f"extra file name {file!r}: expected a plain file name "
                             f"other than '{name}.inter' and '*{FEATURE_SUFFIX}'")
    with atomic_directory(directory, overwrite) as tmp:
        with atomic_path(tmp / f'{name}.inter') as path:
            table.to_csv(path, sep='\t', index=False, lineterminator='\n')
        for modality, value in features.items():
            array = value.detach().cpu().numpy().astype(np.float32, copy=False)
            with atomic_path(tmp / f'{modality}{FEATURE_SUFFIX}') as path:
                with open(path, 'wb') as f:
                    np.save(f, array, allow_pickle=False)
        for file, content in extra_files.items():
            with atomic_path(tmp / file) as path:
                if isinstance(content, np.ndarray):
                    with open(path, 'wb') as f:
                        np.save(f, content, allow_pickle=False)
                elif isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content)
    return directory


def _inter_table(data: HeteroData) -> Tuple[pd.DataFrame, Tuple[str, ...]]:
    if UI not in data.edge_types or 'edge_index' not in data[UI]:
        raise DataError(f'data: expected training edges data[{UI!r}].edge_index')
    store = data[UI]
    parts = []
    for split, label in SPLIT_LABELS.items():
        key = 'edge_index' if split == 'train' else f'{split}_edge_label_index'
        edges = store[key] if key in store else torch.empty(2, 0, dtype=torch.long)
        if edges.dim() != 2 or edges.size(0) != 2:
            raise DataError(f'data[{UI!r}].{key}: expected shape [2, E], found '
                            f'{tuple(edges.shape)}')
        edges = edges.detach().cpu().numpy().astype(np.int64, copy=False)
        parts.append((edges, np.full(edges.shape[1], label, dtype=np.int64)))
    edges = np.concatenate([p[0] for p in parts], axis=1)
    labels = np.concatenate([p[1] for p in parts])
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    for row, kind, count in ((0, 'user', num_users), (1, 'item', num_items)):
        ids = edges[row]
        if ids.size and (ids.min() < 0 or ids.max() >= count):
            raise DataError(f"data: {kind} ids outside 0..{count - 1} "
                            f"(data['{kind}'].num_nodes = {count})")
        if ids.size == 0 or ids.max() + 1 != count:
            raise DataError(f"data: the MMRec format derives the number of {kind}s "
                            f"from the largest id, but {kind} {count - 1} has no "
                            f"interaction (data['{kind}'].num_nodes = {count})")
    modalities = tuple(getattr(data, 'modalities', None) or ())
    if not modalities:
        raise DataError('data.modalities: expected at least one item modality')
    for m in modalities:
        if m not in data['item']:
            raise DataError(f"data['item'].{m}: listed in data.modalities but absent")
        x = data['item'][m]
        if x.dim() != 2 or x.size(0) != num_items:
            raise DataError(f"data['item'].{m}: expected shape [{num_items}, D], "
                            f'found {tuple(x.shape)}')
    table = pd.DataFrame({
        'userID': edges[0],
        'itemID': edges[1],
        'rating': np.ones(edges.shape[1], dtype=np.float32),
        'timestamp': np.zeros(edges.shape[1], dtype=np.int64),
        'x_label': labels,
    }, columns=list(INTER_COLUMNS))
    return table, modalities


def split_labels(users: np.ndarray, num_users: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``x_label`` per interaction by MMRec's per-user random split.

    Each user's interactions are shuffled; a user with fewer than 10 interactions gets
    exactly one validation (1) and one test (2) interaction, the rest train (0);
    otherwise ``m = int(0.2 n)`` interactions are held out, ``m // 2`` for validation
    and ``m - m // 2`` for test. Vectorised: one lexsort by (user, random key).
    """
    U = num_users
    E = users.size
    order = np.lexsort((rng.random(E), users))
    sorted_users = users[order]
    pos = np.arange(E) - np.searchsorted(sorted_users, sorted_users)
    n = np.bincount(users, minlength=U)[sorted_users]
    m = np.where(n < 10, 2, (0.2 * n).astype(np.int64))
    n_valid = np.where(n < 10, 1, m // 2)
    label = np.zeros(E, dtype=np.int64)
    label[order] = np.where(pos < n_valid, 1, np.where(pos < m, 2, 0))
    return label
