"""Bad MMRec input stops with a DataError naming the file and the line/column/field."""
from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mambarec_pyg.data import DataError, load_mmrec
from mambarec_pyg.data.mmrec import _scan_for_problem, read_inter


@pytest.fixture()
def root(released_tiny_dir, tmp_path) -> Path:
    """A writable copy of the fixture dataset: ``root/tiny/``."""
    shutil.copytree(released_tiny_dir / 'tiny', tmp_path / 'tiny')
    return tmp_path


def _inter(root: Path) -> Path:
    return root / 'tiny' / 'tiny.inter'


def _set_field(root: Path, line: int, column: int, value: str) -> None:
    """Replace field ``column`` (0-based) of 1-based ``line`` of tiny.inter."""
    path = _inter(root)
    lines = path.read_text().splitlines()
    fields = lines[line - 1].split('\t')
    fields[column] = value
    lines[line - 1] = '\t'.join(fields)
    path.write_text('\n'.join(lines) + '\n')


def test_missing_directory(tmp_path):
    (tmp_path / 'baby').mkdir()
    with pytest.raises(DataError, match=r"dataset directory .*bayb' not found; did "
                       r"you mean 'baby'\?"):
        load_mmrec(tmp_path, 'bayb')


def test_missing_inter_file(root):
    _inter(root).rename(root / 'tiny' / 'other.inter')
    with pytest.raises(DataError, match=r"interaction file .*tiny\.inter' not found "
                       r".*found: other\.inter"):
        load_mmrec(root, 'tiny')


def test_no_feature_files(root):
    for p in (root / 'tiny').glob('*_feat.npy'):
        p.unlink()
    with pytest.raises(DataError, match=r"no item feature files found; expected one "
                       r"'<modality>_feat\.npy'"):
        load_mmrec(root, 'tiny')


def test_requested_modality_missing(root):
    with pytest.raises(DataError, match=r"modality 'imag' not found \(no "
                       r"'imag_feat\.npy'\); did you mean 'image'\?; found: image, "
                       r"text"):
        load_mmrec(root, 'tiny', modalities=['imag'])


def test_misspelt_column(root):
    _set_field(root, 1, 0, 'userId')
    with pytest.raises(DataError, match=r"tiny\.inter: line 1 \(header\): expected "
                       r"tab-separated columns userID, itemID.*found \['userId', "
                       r".*'userID' not found; did you mean 'userId'\?"):
        load_mmrec(root, 'tiny')


def test_missing_column(root):
    path = _inter(root)
    lines = [line.rsplit('\t', 1)[0] for line in path.read_text().splitlines()]
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataError, match=r"tiny\.inter: line 1 \(header\).*found "
                       r"\['userID', 'itemID', 'rating', 'timestamp'\].*'x_label' not "
                       r"found"):
        load_mmrec(root, 'tiny')


def test_not_tab_separated(root):
    path = _inter(root)
    path.write_text(path.read_text().replace('\t', ','))
    with pytest.raises(DataError, match=r"expected tab-separated columns .* found "
                       r"\['userID,itemID,rating,timestamp,x_label'\]"):
        load_mmrec(root, 'tiny')


@pytest.mark.parametrize('value', ['3.5', 'abc', ''])
def test_non_integer_id(root, value):
    _set_field(root, 7, 1, value)
    with pytest.raises(DataError, match=rf"tiny\.inter: line 7, column 'itemID': "
                       rf"expected a non-negative integer id, got '{value}'"):
        load_mmrec(root, 'tiny')


def test_negative_id(root):
    _set_field(root, 12, 0, '-3')
    with pytest.raises(DataError, match=r"tiny\.inter: line 12, column 'userID': "
                       r"expected a non-negative integer id, got '-3'"):
        load_mmrec(root, 'tiny')


@pytest.mark.parametrize('value', ['3', '-1', 'test'])
def test_bad_x_label(root, value):
    _set_field(root, 100, 4, value)
    with pytest.raises(DataError, match=rf"tiny\.inter: line 100, column 'x_label': "
                       rf"expected 0 \(train\), 1 \(valid\) or 2 \(test\), got "
                       rf"'{value}'"):
        load_mmrec(root, 'tiny')


def test_wrong_number_of_fields(root):
    path = _inter(root)
    lines = path.read_text().splitlines()
    lines[19] += '\textra'
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataError, match=r"tiny\.inter: line 20: expected 5 "
                       r"tab-separated fields as in the header, found 6"):
        load_mmrec(root, 'tiny')


def test_line_numbers_count_blank_lines(root):
    path = _inter(root)
    lines = path.read_text().splitlines()
    lines.insert(3, '')  # a blank line 4
    lines[9] = lines[9].replace('\t', '\tx', 1)  # line 10: itemID 'x..'
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataError, match=r"line 10, column 'itemID'"):
        load_mmrec(root, 'tiny')


def test_feature_rows_mismatch(root):
    path = root / 'tiny' / 'text_feat.npy'
    np.save(path, np.load(path)[:29])
    with pytest.raises(DataError, match=r"text_feat\.npy: found 29 rows, expected 30 "
                       r"\(one per item"):
        load_mmrec(root, 'tiny')


def test_features_not_2d(root):
    np.save(root / 'tiny' / 'image_feat.npy', np.zeros((30, 4, 2), dtype=np.float32))
    with pytest.raises(DataError, match=r"image_feat\.npy: expected a 2-D array "
                       r"\[items, dim\], found shape \(30, 4, 2\)"):
        load_mmrec(root, 'tiny')


def test_features_not_an_array(root):
    (root / 'tiny' / 'image_feat.npy').write_bytes(b'not numpy')
    with pytest.raises(DataError, match=r"image_feat\.npy: not a readable \.npy"):
        load_mmrec(root, 'tiny')


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_features(root, bad):
    path = root / 'tiny' / 'text_feat.npy'
    x = np.load(path)
    x[3, 5] = bad
    x[17, 0] = bad
    x[17, 1] = bad
    np.save(path, x)
    with pytest.raises(DataError, match=r"text_feat\.npy: 2 rows contain NaN or inf "
                       r"\(first bad row: 3\)"):
        load_mmrec(root, 'tiny')


def test_empty_training_split(root):
    path = _inter(root)
    lines = path.read_text().splitlines()
    lines = [lines[0]] + [line[:-1] + '1' for line in lines[1:]]
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataError, match=r"tiny\.inter: the training split is empty "
                       r"\(no row with x_label 0\)"):
        load_mmrec(root, 'tiny')


def test_header_only(root):
    path = _inter(root)
    path.write_text(path.read_text().splitlines()[0] + '\n')
    with pytest.raises(DataError, match=r"tiny\.inter: no interactions after the "
                       r"header"):
        load_mmrec(root, 'tiny')


def test_empty_file(root):
    _inter(root).write_text('')
    with pytest.raises(DataError, match=r"tiny\.inter: line 1: empty; expected the "
                       r"tab-separated header"):
        load_mmrec(root, 'tiny')


def test_scan_accepts_what_fast_path_accepts(root):
    # The line-by-line check (slow path) finds nothing wrong in a good file, and the
    # fast path reads the same columns as a plain parse.
    path = _inter(root)
    header = path.read_text().splitlines()[0].split('\t')
    _scan_for_problem(path, header)
    users, items, labels = read_inter(path)
    plain = np.array([[int(v) for v in line.split('\t')[:2]] + [int(line.split('\t')[4])]
                      for line in path.read_text().splitlines()[1:]])
    np.testing.assert_array_equal(np.stack([users, items, labels], 1), plain)


def test_blank_lines_are_ignored(root, released_tiny_dir):
    path = _inter(root)
    lines = path.read_text().splitlines()
    lines.insert(5, '')
    path.write_text('\n'.join(lines) + '\n\n')
    data = load_mmrec(root, 'tiny')
    ref = load_mmrec(released_tiny_dir, 'tiny')
    assert data['user', 'interacts', 'item'].edge_index.equal(
        ref['user', 'interacts', 'item'].edge_index)


def test_sparse_raw_ids_rejected(root):
    _set_field(root, 9, 0, '123456789')
    with pytest.raises(DataError, match=r"tiny\.inter: line 9, column 'userID': id "
                       r"123456789 is far larger than the 320 interactions; expected "
                       r"dense ids"):
        load_mmrec(root, 'tiny')


def test_reserved_modality_name(root):
    np.save(root / 'tiny' / 'num_nodes_feat.npy', np.zeros((30, 2), dtype=np.float32))
    with pytest.raises(DataError, match=r"num_nodes_feat\.npy: modality name "
                       r"'num_nodes' cannot be used"):
        load_mmrec(root, 'tiny')


def test_large_finite_features_pass_the_finiteness_check(root):
    # The fast check sums in float64; float32 extremes must not overflow it.
    x = np.full((30, 24), np.finfo(np.float32).max, dtype=np.float32)
    x[::2] *= -1
    np.save(root / 'tiny' / 'text_feat.npy', x)
    data = load_mmrec(root, 'tiny')
    assert np.array_equal(data['item'].text.numpy(), x)


# ---------------------------------------------------------------------------------
# Ids must be written canonically; features must be arrays of numbers
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('column, name', [(0, 'userID'), (1, 'itemID')])
@pytest.mark.parametrize('value', ['1e1', '3.0', '+3', '-0', ' 3', '3 ', '03', '"3"',
                                   '0x1', '1_0', '\uff13'])
def test_non_canonical_ids_are_refused(root, column, name, value):
    # pandas reads all of these as integers; they are refused by line, column, text
    _set_field(root, 11, column, value)
    with pytest.raises(DataError, match=rf"tiny\.inter: line 11, column '{name}': "
                       rf"expected a non-negative integer id, got "
                       rf"{re.escape(repr(value))} \(ids are plain decimal digits"):
        load_mmrec(root, 'tiny')


@pytest.mark.parametrize('value', ['+1', '1.0', '01', ' 1', '1e0'])
def test_non_canonical_x_label_is_refused(root, value):
    _set_field(root, 40, 4, value)
    with pytest.raises(DataError, match=rf"tiny\.inter: line 40, column 'x_label': "
                       rf"expected 0 \(train\), 1 \(valid\) or 2 \(test\), got "
                       rf"{re.escape(repr(value))}"):
        load_mmrec(root, 'tiny')


@pytest.mark.parametrize('value', ['99999999999999999999', '9223372036854775808'])
def test_an_id_beyond_int64_names_file_line_and_column(root, value):
    _set_field(root, 9, 1, value)  # pandas raised a bare OverflowError / ValueError
    with pytest.raises(DataError, match=rf"tiny\.inter: line 9, column 'itemID': id "
                       rf"{value} is too large \(at most 2\*\*63 - 1\); expected "
                       rf"dense ids"):
        load_mmrec(root, 'tiny')


def test_a_19_digit_id_within_int64_is_named_too(root):
    _set_field(root, 9, 0, '9223372036854775807')
    with pytest.raises(DataError, match=r"tiny\.inter: line 9, column 'userID': id "
                       r"9223372036854775807 is far larger than the 320 "
                       r"interactions"):
        load_mmrec(root, 'tiny')


def test_canonical_forms_are_read(root, released_tiny_dir):
    # zero itself, CRLF line endings and no final newline are all fine
    path = _inter(root)
    path.write_bytes(path.read_text().rstrip('\n').replace('\n', '\r\n').encode())
    got = read_inter(path)
    want = read_inter(_inter(released_tiny_dir))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert got[0].min() == 0 and got[1].min() == 0 and set(got[2]) == {0, 1, 2}


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def _no_pickle_advice(message: str) -> None:
    assert 'pickle' not in message.lower().replace('a python pickle', '')


def test_a_text_file_saved_as_npy(root):
    (root / 'tiny' / 'image_feat.npy').write_text('0.1 0.2 0.3\n0.4 0.5 0.6\n')
    with pytest.raises(DataError, match=r"image_feat\.npy: not a readable \.npy "
                       r"array: it is a text file \(it begins '0\.1 0\.2.*expected a "
                       r"\.npy array of numbers \[items, dim\]") as e:
        load_mmrec(root, 'tiny')
    _no_pickle_advice(str(e.value))


def test_an_object_array_npy_is_refused_unread(root, tmp_path):
    marker = tmp_path / 'marker'
    items = np.empty((30, 2), dtype=object)
    items[:] = 0.5
    items[3, 1] = _Payload(marker)
    np.save(root / 'tiny' / 'image_feat.npy', items, allow_pickle=True)
    with pytest.raises(DataError, match=r"image_feat\.npy: holds an array of Python "
                       r"objects \(dtype object\), not numbers; expected a \.npy "
                       r"array of numbers") as e:
        load_mmrec(root, 'tiny')
    _no_pickle_advice(str(e.value))
    assert not marker.exists()
    np.load(root / 'tiny' / 'image_feat.npy', allow_pickle=True)  # the control
    assert marker.exists()


@pytest.mark.parametrize('kind, found', [
    ('npz', r'it is a zip archive \(an \.npz file\?\), not a single array'),
    ('pickle', r'it is a Python pickle, not an array'),
    ('empty', r'the file is empty'),
    ('binary', r'it does not begin with the \.npy signature'),
])
def test_other_files_saved_as_npy(root, kind, found):
    path = root / 'tiny' / 'text_feat.npy'
    if kind == 'npz':
        with open(path, 'wb') as f:
            np.savez(f, x=np.zeros((30, 4), dtype=np.float32))
    elif kind == 'pickle':
        path.write_bytes(pickle.dumps(np.zeros((30, 4)).tolist()))
    elif kind == 'empty':
        path.write_bytes(b'')
    else:
        path.write_bytes(bytes(range(7, 71)))
    with pytest.raises(DataError, match=rf"text_feat\.npy: not a readable \.npy "
                       rf"array: {found}") as e:
        load_mmrec(root, 'tiny')
    _no_pickle_advice(str(e.value))
