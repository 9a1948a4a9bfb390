"""Faults in MMRec files that used to pass silently or end in a raw exception: a
feature entry that is not a regular file, zero-width features, a byte that is not
UTF-8 in the interaction file, a column named twice in its header. Each stops with a
:class:`DataError` naming the file (and the line, where there is one)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mambarec_pyg.data import DataError, load_mmrec, write_mmrec
from mambarec_pyg.data.mmrec import feature_files, read_inter


@pytest.fixture()
def root(released_tiny_dir, tmp_path) -> Path:
    """A writable copy of the fixture dataset: ``root/tiny/`` (image and text)."""
    shutil.copytree(released_tiny_dir / 'tiny', tmp_path / 'tiny')
    return tmp_path


def _replace_image(root: Path, kind: str) -> None:
    """Put an entry that is not a regular file where ``image_feat.npy`` was."""
    path = root / 'tiny' / 'image_feat.npy'
    path.unlink()
    if kind == 'dev-zero':
        os.symlink('/dev/zero', path)
    elif kind == 'broken-symlink':
        os.symlink(root / 'no-such-file.npy', path)
    elif kind == 'directory':
        path.mkdir()
    elif kind == 'fifo':  # reading it would block forever
        os.mkfifo(path)
    else:
        raise AssertionError(kind)


KINDS = {
    'dev-zero': r'a character device \(through a symbolic link to /dev/zero\)',
    'broken-symlink': r'a broken symbolic link \(to .*no-such-file\.npy\)',
    'directory': r'a directory',
    'fifo': r'a named pipe',
}


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_a_feature_entry_that_is_not_a_regular_file_stops_the_load(root, kind):
    if kind == 'dev-zero' and not os.path.exists('/dev/zero'):
        pytest.skip('no /dev/zero on this system')
    _replace_image(root, kind)
    assert 'image' in feature_files(root / 'tiny')  # it counts as present
    with pytest.raises(DataError, match=r'image_feat\.npy: not a regular file: it is '
                       + KINDS[kind] + r'; expected a \.npy array'):
        load_mmrec(root, 'tiny')  # all found: the image entry is one of them


def test_a_bad_entry_of_a_modality_not_asked_for_is_not_read(root):
    _replace_image(root, 'directory')
    data = load_mmrec(root, 'tiny', modalities=['text'])
    assert data.modalities == ('text', )


def test_a_symbolic_link_to_a_regular_file_is_read(root, tmp_path):
    path = root / 'tiny' / 'image_feat.npy'
    target = tmp_path / 'elsewhere.npy'
    shutil.move(str(path), target)
    os.symlink(target, path)
    data = load_mmrec(root, 'tiny')
    assert data.modalities == ('image', 'text')
    np.testing.assert_array_equal(data['item'].image.numpy(), np.load(target))


def test_zero_width_features_name_the_file(root):
    np.save(root / 'tiny' / 'text_feat.npy', np.zeros((30, 0), dtype=np.float32))
    with pytest.raises(DataError, match=r'text_feat\.npy: found 0 columns \(shape '
                       r'\(30, 0\)\); expected at least one feature per item'):
        load_mmrec(root, 'tiny')


# ---------------------------------------------------------------------------------
# The interaction file
# ---------------------------------------------------------------------------------
def _put_byte(path: Path, line: int, byte: bytes, after_field: int = 2) -> None:
    """Write ``byte`` into 1-based ``line`` of ``path`` after field ``after_field``."""
    lines = path.read_bytes().split(b'\n')
    fields = lines[line - 1].split(b'\t')
    fields[after_field] += byte
    lines[line - 1] = b'\t'.join(fields)
    path.write_bytes(b'\n'.join(lines))


@pytest.mark.parametrize('line', [1, 6])
def test_a_byte_that_is_not_utf8_names_file_and_line(root, line):
    path = root / 'tiny' / 'tiny.inter'
    _put_byte(path, line, b'\xff')
    with pytest.raises(DataError, match=rf'tiny\.inter: line {line}: byte 0xff is not '
                       r'UTF-8 text; expected a UTF-8 \(or ASCII\) tab-separated file'):
        load_mmrec(root, 'tiny')


def test_a_byte_that_is_not_utf8_far_into_a_file(tiny_data, tmp_path):
    # beyond the first 8 KiB, which a text reader decodes along with the header
    write_mmrec(tiny_data, tmp_path, 'long')
    path = tmp_path / 'long' / 'long.inter'
    lines = path.read_bytes().split(b'\n')
    line = len(lines) - 10
    assert sum(len(x) + 1 for x in lines[:line - 1]) > 8192
    _put_byte(path, line, b'\xc3\x28')  # an invalid two-byte sequence
    with pytest.raises(DataError, match=rf'long\.inter: line {line}: byte 0xc3 is not '
                       r'UTF-8'):
        read_inter(path)


@pytest.mark.parametrize('header, column, fields', [
    ('userID\titemID\titemID\ttimestamp\tx_label', 'itemID', '2 and 3'),
    ('userID\titemID\trating\tuserID\tx_label', 'userID', '1 and 4'),
    ('userID\titemID\trating\trating\tx_label', 'rating', '3 and 4'),
])
def test_a_column_named_twice_in_the_header_is_refused(root, header, column, fields):
    path = root / 'tiny' / 'tiny.inter'
    lines = path.read_text().split('\n')
    lines[0] = header
    path.write_text('\n'.join(lines))
    with pytest.raises(DataError, match=rf"tiny\.inter: line 1 \(header\): column "
                       rf"'{column}' appears twice \(fields {fields}\); expected each "
                       rf"column once"):
        load_mmrec(root, 'tiny')
