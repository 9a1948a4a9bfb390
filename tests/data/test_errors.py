"""Bad MMRec input stops with a DataError naming the file and the line/column/field."""
from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path
from typing import List

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


def _read_lines(root: Path) -> List[str]:
    """The lines of tiny.inter, header first."""
    return _inter(root).read_text().splitlines()


def _write_lines(root: Path, lines: List[str]) -> None:
    """Write ``lines`` as tiny.inter, each ended by a newline."""
    _inter(root).write_text('\n'.join(lines) + '\n')


def _set_field(root: Path, line: int, column: int, value: str) -> None:
    """Replace field ``column`` (0-based) of 1-based ``line`` of tiny.inter."""
    lines = _read_lines(root)
    fields = lines[line - 1].split('\t')
    fields[column] = value
    lines[line - 1] = '\t'.join(fields)
    _write_lines(root, lines)


def _assert_load_fails(root: Path, match: str, **options) -> DataError:
    """Loading ``root / 'tiny'`` (with ``options``) raises a DataError whose message
    matches the regular expression ``match`` (``re.search``); returns it."""
    with pytest.raises(DataError, match=match) as info:
        load_mmrec(root, 'tiny', **options)
    return info.value


def test_missing_directory(tmp_path):
    (tmp_path / 'baby').mkdir()
    with pytest.raises(DataError, match=r"dataset directory .*bayb' not found; did "
                       r"you mean 'baby'\?"):
        load_mmrec(tmp_path, 'bayb')


def test_missing_inter_file(root):
    _inter(root).rename(root / 'tiny' / 'other.inter')
    _assert_load_fails(root, r"interaction file .*tiny\.inter' not found .*found: "
                      r"other\.inter")


def test_no_feature_files(root):
    for p in (root / 'tiny').glob('*_feat.npy'):
        p.unlink()
    _assert_load_fails(root, r"no item feature files found; expected one "
                      r"'<modality>_feat\.npy'")


def test_requested_modality_missing(root):
    _assert_load_fails(root, r"modality 'imag' not found \(no 'imag_feat\.npy'\); did you "
                      r"mean 'image'\?; found: image, text", modalities=['imag'])


def test_misspelt_column(root):
    _set_field(root, 1, 0, 'userId')
    _assert_load_fails(root, r"tiny\.inter: line 1 \(header\): expected tab-separated "
                      r"columns userID, itemID.*found \['userId', .*'userID' not "
                      r"found; did you mean 'userId'\?")


def test_missing_column(root):
    _write_lines(root, [line.rsplit('\t', 1)[0] for line in _read_lines(root)])
    _assert_load_fails(root, r"tiny\.inter: line 1 \(header\).*found \['userID', 'itemID', "
                      r"'rating', 'timestamp'\].*'x_label' not found")


def test_not_tab_separated(root):
    path = _inter(root)
    path.write_text(path.read_text().replace('\t', ','))
    _assert_load_fails(root, r"expected tab-separated columns .* found "
                      r"\['userID,itemID,rating,timestamp,x_label'\]")


@pytest.mark.parametrize('value', ['3.5', 'abc', ''])
def test_non_integer_id(root, value):
    _set_field(root, 7, 1, value)
    _assert_load_fails(root, rf"tiny\.inter: line 7, column 'itemID': expected a "
                      rf"non-negative integer id, got '{value}'")


def test_negative_id(root):
    _set_field(root, 12, 0, '-3')
    _assert_load_fails(root, r"tiny\.inter: line 12, column 'userID': expected a "
                      r"non-negative integer id, got '-3'")


@pytest.mark.parametrize('value', ['3', '-1', 'test'])
def test_bad_x_label(root, value):
    _set_field(root, 100, 4, value)
    _assert_load_fails(root, rf"tiny\.inter: line 100, column 'x_label': expected 0 "
                      rf"\(train\), 1 \(valid\) or 2 \(test\), got '{value}'")


def test_wrong_number_of_fields(root):
    lines = _read_lines(root)
    lines[19] += '\textra'
    _write_lines(root, lines)
    _assert_load_fails(root, r"tiny\.inter: line 20: expected 5 tab-separated fields as in "
                      r"the header, found 6")


def test_line_numbers_count_blank_lines(root):
    lines = _read_lines(root)
    lines.insert(3, '')  # a blank line 4
    lines[9] = lines[9].replace('\t', '\tx', 1)  # line 10: itemID 'x..'
    _write_lines(root, lines)
    _assert_load_fails(root, r"line 10, column 'itemID'")


def test_feature_rows_mismatch(root):
    path = root / 'tiny' / 'text_feat.npy'
    np.save(path, np.load(path)[:29])
    _assert_load_fails(root, r"text_feat\.npy: found 29 rows, expected 30 \(one per item")


def test_features_not_2d(root):
    np.save(root / 'tiny' / 'image_feat.npy', np.zeros((30, 4, 2), dtype=np.float32))
    _assert_load_fails(root, r"image_feat\.npy: expected a 2-D array \[items, dim\], found "
                      r"shape \(30, 4, 2\)")


def test_features_not_an_array(root):
    (root / 'tiny' / 'image_feat.npy').write_bytes(b'not numpy')
    _assert_load_fails(root, r"image_feat\.npy: not a readable \.npy")


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_features(root, bad):
    path = root / 'tiny' / 'text_feat.npy'
    x = np.load(path)
    x[3, 5] = bad
    x[17, 0] = bad
    x[17, 1] = bad
    np.save(path, x)
    _assert_load_fails(root, r"text_feat\.npy: 2 rows contain NaN or inf \(first bad row: 3\)")


def test_empty_training_split(root):
    lines = _read_lines(root)
    _write_lines(root, [lines[0]] + [line[:-1] + '1' for line in lines[1:]])
    _assert_load_fails(root, r"tiny\.inter: the training split is empty \(no row with "
                      r"x_label 0\)")


def test_header_only(root):
    _write_lines(root, _read_lines(root)[:1])
    _assert_load_fails(root, r"tiny\.inter: no interactions after the header")


def test_empty_file(root):
    _inter(root).write_text('')
    _assert_load_fails(root, r"tiny\.inter: line 1: empty; expected the tab-separated header")


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
    _assert_load_fails(root, r"tiny\.inter: line 9, column 'userID': id 123456789 is far "
                      r"larger than the 320 interactions; expected dense ids")


def test_reserved_modality_name(root):
    np.save(root / 'tiny' / 'num_nodes_feat.npy', np.zeros((30, 2), dtype=np.float32))
    _assert_load_fails(root, r"num_nodes_feat\.npy: modality name 'num_nodes' cannot be used")


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
    _assert_load_fails(root, rf"tiny\.inter: line 11, column '{name}': expected a "
                      rf"non-negative integer id, got {re.escape(repr(value))} \(ids "
                      rf"are plain decimal digits")


@pytest.mark.parametrize('value', ['+1', '1.0', '01', ' 1', '1e0'])
def test_non_canonical_x_label_is_refused(root, value):
    _set_field(root, 40, 4, value)
    _assert_load_fails(root, rf"tiny\.inter: line 40, column 'x_label': expected 0 "
                      rf"\(train\), 1 \(valid\) or 2 \(test\), got "
                      rf"{re.escape(repr(value))}")


@pytest.mark.parametrize('value', ['99999999999999999999', '9223372036854775808'])
def test_an_id_beyond_int64_names_file_line_and_column(root, value):
    _set_field(root, 9, 1, value)  # pandas raised a bare OverflowError / ValueError
    _assert_load_fails(root, rf"tiny\.inter: line 9, column 'itemID': id {value} is too "
                      rf"large \(at most 2\*\*63 - 1\); expected dense ids")


def test_a_19_digit_id_within_int64_is_named_too(root):
    _set_field(root, 9, 0, '9223372036854775807')
    _assert_load_fails(root, r"tiny\.inter: line 9, column 'userID': id 9223372036854775807 "
                      r"is far larger than the 320 interactions")


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
    error = _assert_load_fails(root, r"image_feat\.npy: not a readable \.npy array: it is a "
                              r"text file \(it begins '0\.1 0\.2.*expected a \.npy "
                              r"array of numbers \[items, dim\]")
    _no_pickle_advice(str(error))


def test_an_object_array_npy_is_refused_unread(root, tmp_path):
    marker = tmp_path / 'marker'
    items = np.empty((30, 2), dtype=object)
    items[:] = 0.5
    items[3, 1] = _Payload(marker)
    np.save(root / 'tiny' / 'image_feat.npy', items, allow_pickle=True)
    error = _assert_load_fails(root, r"image_feat\.npy: holds an array of Python objects "
                              r"\(dtype object\), not numbers; expected a \.npy array "
                              r"of numbers")
    _no_pickle_advice(str(error))
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
    error = _assert_load_fails(root, rf"text_feat\.npy: not a readable \.npy array: {found}")
    _no_pickle_advice(str(error))
