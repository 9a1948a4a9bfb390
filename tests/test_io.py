import os

import pytest

from mambarec_pyg.io import atomic_path, atomic_write_text


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / 'out.txt'
    atomic_write_text(target, 'old')
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('half')
            raise RuntimeError('boom')
    assert target.read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.txt']


def test_atomic_path_gives_usual_permissions(tmp_path):
    target = tmp_path / 'out.txt'
    atomic_write_text(target, 'x')
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask


def test_write_json_converts_tensors_numpy_paths_and_nan(tmp_path):
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from mambarec_pyg.io import write_json
    out = write_json(tmp_path / 'r.json', {'t': torch.tensor([1.5, 2.0]),
                                           'n': np.float32(0.25), 'p': Path('a/b'),
                                           1: float('nan')})
    assert json.loads(out.read_text()) == {'t': [1.5, 2.0], 'n': 0.25, 'p': 'a/b',
                                           '1': 'nan'}
