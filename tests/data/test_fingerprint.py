"""The data fingerprint a checkpoint records, and what ``evaluate``, ``recommend`` and
``--resume`` do with it: the same data pass; changed data are refused with what
changed, or used with a loud warning under ``--allow-changed-data``; a checkpoint
without a fingerprint gets a warning; an empty split is an error, not zeros."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from support import MF, MFConfig, with_item_features

from mambarec_pyg.cli import main
from mambarec_pyg.config import Config, ConfigError, DataConfig, TrainConfig
from mambarec_pyg.data import (DataChangedWarning, DataError, data_fingerprint,
                               fingerprint_changes, load_mmrec, write_mmrec)
from mambarec_pyg.train.checkpoint import load_checkpoint, save_checkpoint
from mambarec_pyg.train.evaluate import Evaluator, check_split, evaluate
from mambarec_pyg.train.experiment import load_run
from mambarec_pyg.train.trainer import Trainer
from mambarec_pyg.utils import seed_everything

UI = ('user', 'interacts', 'item')
FAST = ['--train.batch-size', '256', '--device', 'cpu', '--quiet',
        '--train.num-threads', '1']


def _plain_pairs_sha256(edge_index: torch.Tensor, num_items: int) -> str:
    """The documented recipe, computed independently: sha256 of b'pairs|int64|'
    and the sorted keys u * N + i as little-endian int64."""
    keys = sorted(int(u) * num_items + int(i) for u, i in edge_index.t().tolist())
    return hashlib.sha256(b'pairs|int64|' + np.asarray(keys, dtype='<i8').tobytes()
                          ).hexdigest()


def _copy(data):
    out = with_item_features(data, {m: data['item'][m].clone()
                                    for m in data.modalities}, splits=True)
    out.name = data.name
    return out


def test_the_fingerprint_follows_its_documented_recipe(tiny_data):
    fp = data_fingerprint(tiny_data)
    n = tiny_data['item'].num_nodes
    store = tiny_data[UI]
    assert fp['version'] == 1
    assert (fp['num_users'], fp['num_items']) == (100, 60)
    for split, key in (('train', 'edge_index'), ('valid', 'valid_edge_label_index'),
                       ('test', 'test_edge_label_index')):
        assert fp['splits'][split] == {'count': store[key].size(1),
                                       'sha256': _plain_pairs_sha256(store[key], n)}
    for m in tiny_data.modalities:
        x = tiny_data['item'][m]
        expected = hashlib.sha256(f'{x.dtype}|{tuple(x.shape)}|'.encode() +
                                  x.numpy().tobytes()).hexdigest()
        assert fp['features'][m] == {'shape': list(x.shape), 'sha256': expected}
    assert json.loads(json.dumps(fp)) == fp  # plain values only
    assert fingerprint_changes(fp, data_fingerprint(_copy(tiny_data))) == []


def test_the_order_of_the_rows_does_not_matter(tiny_data):
    data = _copy(tiny_data)
    store = data[UI]
    for key in ('edge_index', 'test_edge_label_index'):
        store[key] = store[key].flip(1)
    assert fingerprint_changes(data_fingerprint(tiny_data),
                               data_fingerprint(data)) == []


def _changed(tiny_data, how: str):
    data = _copy(tiny_data)
    store = data[UI]
    if how == 'one test row fewer':
        store.test_edge_label_index = store.test_edge_label_index[:, 1:]
    elif how == 'a valid pair moved to test':
        moved = store.valid_edge_label_index[:, :1]
        store.valid_edge_label_index = store.valid_edge_label_index[:, 1:]
        store.test_edge_label_index = torch.cat([store.test_edge_label_index, moved], 1)
    elif how == 'another training item':
        ei = store.edge_index.clone()
        ei[1, 0] = (ei[1, 0] + 1) % data['item'].num_nodes
        store.edge_index = ei
    elif how == 'other text values':
        data['item'].text = data['item'].text + 1e-3
    elif how == 'narrower image features':
        data['item'].image = data['item'].image[:, :8].clone()
    elif how == 'no image features':
        del data['item'].image
        data.modalities = ('text', )
    elif how == 'one user more':
        data['user'].num_nodes = data['user'].num_nodes + 1
    return data


@pytest.mark.parametrize('how, expected', [
    ('one test row fewer', ['test interactions: 117 in the checkpoint, 116 now']),
    ('a valid pair moved to test', ['valid interactions: 106 in the checkpoint, 105 '
                                    'now',
                                    'test interactions: 117 in the checkpoint, 118 '
                                    'now']),
    ('another training item', ['train interactions: as many (777) but not the same '
                               '(user, item) pairs']),
    ('other text values', ['text features: the same shape [60, 32] but other values']),
    ('narrower image features', ['image features: shape [60, 64] in the checkpoint, '
                                 '[60, 8] now']),
    ('no image features', ['modalities: image, text in the checkpoint, text now']),
    ('one user more', ['users: 100 in the checkpoint, 101 now']),
])
def test_every_change_is_named(tiny_data, how, expected):
    changes = fingerprint_changes(data_fingerprint(tiny_data),
                                  data_fingerprint(_changed(tiny_data, how)))
    assert changes == expected


def test_fingerprints_of_another_version_are_not_compared(tiny_data):
    fp = data_fingerprint(tiny_data)
    assert fingerprint_changes(dict(fp, version=0), fp) is None


# ---------------------------------------------------------------------------------
# evaluate / recommend on the command line
# ---------------------------------------------------------------------------------
def _rewrite(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text('\n'.join([lines[0]] + change(lines[1:])) + '\n')


@pytest.fixture(scope='module')
def trained(tiny_data, tmp_path_factory):
    """LightGCN trained for one epoch on the tiny data written as MMRec files."""
    root = tmp_path_factory.mktemp('fingerprint')
    write_mmrec(tiny_data, root / 'data', 'shop')
    out = root / 'run'
    assert main(['train', '--data', str(root / 'data'), '--dataset', 'shop',
                 '--model.name', 'lightgcn', '--train.max-epochs', '1', '--output',
                 str(out), *FAST]) == 0
    return root


@pytest.fixture()
def moved(trained, tmp_path):
    """A copy of the trained run's data (``--data`` points there), to change."""
    shutil.copytree(trained / 'data' / 'shop', tmp_path / 'shop',
                    ignore=shutil.ignore_patterns('processed'))
    return tmp_path


def _last_test_row_to_valid(rows):
    last = max(i for i, r in enumerate(rows) if r.endswith('\t2'))
    rows[last] = rows[last][:-1] + '1'
    return rows


def test_the_same_data_moved_elsewhere_pass(trained, moved, capsys):
    assert main(['evaluate', str(trained / 'run'), '--data', str(moved), '--quiet',
                 '--format', 'json']) == 0
    captured = capsys.readouterr()
    assert captured.err == ''
    assert json.loads(captured.out)['test']['num_users'] == 100


@pytest.mark.parametrize('command', [['evaluate', '--quiet'],
                                     ['recommend', '--users', '0,1']])
def test_changed_data_are_refused_or_used_with_a_warning(trained, moved, capsys,
                                                         command):
    _rewrite(moved / 'shop' / 'shop.inter', _last_test_row_to_valid)
    argv = [command[0], str(trained / 'run'), '--data', str(moved), *command[1:]]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ''
    line = captured.err.strip()
    assert len(line.splitlines()) == 1 and 'Traceback' not in line
    assert (f'{trained / "run" / "best.pt"}: the data are not those the run was '
            f'trained on (valid interactions: 106 in the checkpoint, 107 now; test '
            f'interactions: 117 in the checkpoint, 116 now)') in line
    assert '--allow-changed-data' in line

    assert main(argv + ['--allow-changed-data']) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f'warning: {trained / "run" / "best.pt"}: the data '
                                   f'are NOT those the run was trained on (valid '
                                   f'interactions: 106')
    assert captured.out  # the metrics or the recommendations


def test_a_checkpoint_without_a_fingerprint_gets_a_warning(trained, tmp_path, capsys):
    old = tmp_path / 'old.pt'
    state = load_checkpoint(trained / 'run' / 'best.pt')
    del state['data_fingerprint']
    save_checkpoint(old, state)
    assert main(['evaluate', str(old), '--quiet', '--format', 'json']) == 0
    captured = capsys.readouterr()
    assert captured.err == (f'warning: {old}: the checkpoint records no data '
                            f'fingerprint (it was written by an older mambarec_pyg '
                            f'version), so it cannot be checked that these are the '
                            f'data it was trained on\n')
    assert json.loads(captured.out)['test']['recall@20'] >= 0
    with pytest.warns(DataChangedWarning, match='records no data fingerprint'):
        load_run(old)


def test_load_run_refuses_changed_data_in_python(trained, tiny_data):
    data = load_mmrec(trained / 'data', 'shop')
    data['item'].text = data['item'].text * 2
    with pytest.raises(DataError, match='text features: the same shape \\[60, 32\\] '
                                        'but other values'):
        load_run(trained / 'run' / 'best.pt', data=data)
    with pytest.warns(DataChangedWarning, match='NOT those the run was trained on'):
        load_run(trained / 'run' / 'best.pt', data=data, allow_changed_data=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the same data: not a word
        load_run(trained / 'run' / 'best.pt')


# ---------------------------------------------------------------------------------
# An empty split is an error
# ---------------------------------------------------------------------------------
def test_evaluate_on_a_split_without_interactions_is_an_error(trained, moved, capsys):
    _rewrite(moved / 'shop' / 'shop.inter', lambda rows: [
        r[:-1] + '0' if r.endswith('\t2') else r for r in rows])
    run = moved / 'run'
    assert main(['train', '--data', str(moved), '--dataset', 'shop', '--model.name',
                 'lightgcn', '--train.max-epochs', '1', '--output', str(run),
                 *FAST]) == 0
    capsys.readouterr()
    for split in ('test', 'both'):
        assert main(['evaluate', str(run), '--split', split, '--quiet']) == 1
        captured = capsys.readouterr()
        assert captured.out == ''
        assert captured.err.strip() == ('mambarec evaluate: error: shop has no test '
                                        'interactions (x_label 2), so there is '
                                        'nothing to evaluate on the test split')
    assert main(['evaluate', str(run), '--split', 'valid', '--quiet']) == 0


def test_the_evaluator_refuses_an_empty_split_in_python(tiny_data):
    data = _copy(tiny_data)
    data[UI].test_edge_label_index = torch.empty(2, 0, dtype=torch.long)
    model = MF(data, MFConfig())
    with pytest.raises(DataError, match='synthetic-tiny-0 has no test interactions'):
        evaluate(model, data, 'test')
    with pytest.raises(DataError, match='has no test interactions'):
        check_split(data, 'test')
    del data[UI].test_edge_label_index
    with pytest.raises(DataError, match='has no test interactions'):
        Evaluator(data)(model, 'test')
    assert evaluate(model, data, 'valid')['num_users'] > 0


# ---------------------------------------------------------------------------------
# --resume on changed data
# ---------------------------------------------------------------------------------
def test_resume_on_changed_data_stops_and_names_the_change(tiny_data, tmp_path):
    config = Config(data=DataConfig(synthetic='tiny'), model=MFConfig(),
                    train=TrainConfig(device='cpu', max_epochs=1, batch_size=128,
                                      checkpoint_interval_s=0.0))
    out = tmp_path / 'run'
    seed_everything(0)
    Trainer(MF(tiny_data, config.model), tiny_data, config, out, quiet=True).fit()
    before = (out / 'last.pt').read_bytes()
    changed = _changed(tiny_data, 'a valid pair moved to test')
    longer = Config(data=config.data, model=config.model,
                    train=TrainConfig(device='cpu', max_epochs=2, batch_size=128))
    with pytest.raises(ConfigError) as info:
        Trainer(MF(changed, config.model), changed, longer, out, resume=True,
                quiet=True).fit()
    msg = str(info.value)
    assert ('cannot resume with different settings (data valid interactions: 106 in '
            'the checkpoint, 105 now; data test interactions: 117 in the checkpoint, '
            '118 now)') in msg
    assert (out / 'last.pt').read_bytes() == before
    # the same data resume
    Trainer(MF(tiny_data, config.model), tiny_data, longer, out, resume=True,
            quiet=True).fit()
    assert load_checkpoint(out / 'last.pt')['epoch'] == 2
