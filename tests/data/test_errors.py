"""Bad MMRec input stops with a DataError naming the file and the line/column/field."""
from __future__ import annotations

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
