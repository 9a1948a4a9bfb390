"""The command line, the example and the figures under the faults of the second
hardening round: what ``results.json`` says about the modalities, non-finite and
unbounded options, a BOM in ``--users-file``, an output path through a file, the
no-valid-split message, ``examples/amazon_baby.py --train.num-threads`` and the
ablation figure's axes and legend."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from mambarec_pyg.cli import main
from mambarec_pyg.data import write_mmrec

FAST = ['--train.batch-size', '256', '--device', 'cpu', '--quiet']
EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert 'Traceback' not in err and not lines[0].startswith('usage:')
    return lines[0]


@pytest.fixture(scope='module')
def mmrec_root(tiny_data, tmp_path_factory) -> Path:
    """The tiny data as MMRec files: ``root/tiny/`` with image and text features."""
    root = tmp_path_factory.mktemp('mmrec')
    write_mmrec(tiny_data, root, 'tiny')
    return root


# ---------------------------------------------------------------------------------
# results.json records the modalities the run used
# ---------------------------------------------------------------------------------
def test_results_record_the_modalities_actually_used(mmrec_root, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(mmrec_root, root)
    out = tmp_path / 'all'
    assert main(['train', '--data', str(root), '--dataset', 'tiny', '--output',
                 str(out), '--train.max-epochs', '1', *FAST]) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['config']['data']['modalities'] is None  # as asked: all found
    assert results['data']['modalities'] == ['image', 'text']  # what was found

    out = tmp_path / 'text'
    assert main(['train', '--data', str(root), '--dataset', 'tiny', '--output',
                 str(out), '--train.max-epochs', '1', '--data.modalities', 'text',
                 *FAST]) == 0
    assert json.loads((out / 'results.json').read_text())['data']['modalities'] == \
        ['text']


def test_a_feature_file_that_cannot_be_read_stops_the_run(mmrec_root, tmp_path, capsys):
    root = tmp_path / 'data'
    shutil.copytree(mmrec_root, root)
    (root / 'tiny' / 'image_feat.npy').unlink()
    os.symlink('/dev/zero', root / 'tiny' / 'image_feat.npy')
    out = tmp_path / 'run'
    assert main(['train', '--data', str(root), '--dataset', 'tiny', '--output',
                 str(out), '--train.max-epochs', '1', *FAST]) == 1
    line = _one_line(capsys.readouterr().err)
    assert 'image_feat.npy: not a regular file: it is a character device' in line
    assert not out.exists()


# ---------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('flag, value, message', [
    ('--train.lr', 'nan', 'train.lr: expected a finite number, got nan'),
    ('--train.lr', 'inf', 'train.lr: expected a finite number, got inf'),
    ('--train.lr-decay-epochs', '-inf', 'train.lr_decay_epochs: expected a finite '
                                        'number, got -inf'),
    ('--model.mmd-weight', 'nan', 'model.mmd_weight: expected a finite number'),
    ('--model.mmd-bandwidth', '1.0,nan', 'model.mmd_bandwidth[1]: expected a finite '
                                         'number, got nan'),
    ('--train.num-threads', '100000', 'train.num_threads: expected an integer from 0 '
                                      "(0: PyTorch's default) to 1024, got 100000"),
])
def test_bad_numbers_on_the_command_line_stop_before_training(tmp_path, capsys, flag,
                                                              value, message):
    out = tmp_path / 'run'
    assert main(['train', '--synthetic', 'tiny', '--output', str(out),
                 f'{flag}={value}', '--train.max-epochs', '1', *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err
    assert not out.exists()


def test_a_duplicate_key_in_a_config_file_stops_the_command(tmp_path, capsys):
    path = tmp_path / 'run.yaml'
    # (the last value small: were the key accepted, the test would train briefly)
    path.write_text('data:\n  synthetic: baby\n  synthetic: tiny\n')
    assert main(['train', '--config', str(path), '--output', str(tmp_path / 'run'),
                 '--train.max-epochs', '1', *FAST]) == 2
    err = capsys.readouterr().err
    assert (f"{path}: line 3: key 'synthetic' given twice in the same mapping (first "
            f"on line 2)") in err
    assert not (tmp_path / 'run').exists()


# ---------------------------------------------------------------------------------
# --users-file, output paths, the no-valid-split message
# ---------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def one_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('served') / 'run'
    assert main(['train', '--synthetic', 'tiny', '--output', str(out),
                 '--train.max-epochs', '1', *FAST]) == 0
    return out


def test_users_file_with_a_byte_order_mark(one_run, tmp_path, capsys):
    plain, bom = tmp_path / 'plain.txt', tmp_path / 'bom.txt'
    plain.write_bytes(b'3\n5\n')
    bom.write_bytes(b'\xef\xbb\xbf3\r\n5\r\n')  # as Windows Notepad saves it
    capsys.readouterr()
    outputs = []
    for path in (plain, bom):
        assert main(['recommend', str(one_run), '--users-file', str(path), '--k',
                     '5', '--format', 'json']) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and [r['user'] for r in outputs[1]] == [3, 5]


@pytest.mark.parametrize('below', ['run', 'a/b/run', ''])
def test_an_output_path_through_a_file_says_which_path_and_why(tmp_path, capsys,
                                                               below):
    blocker = tmp_path / 'results'
    blocker.write_text('not a directory\n')
    out = blocker / below if below else blocker
    assert main(['train', '--synthetic', 'tiny', '--output', str(out),
                 '--train.max-epochs', '1', *FAST]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith('mambarec train: error: cannot create the directory')
    assert f"'{blocker}' is a file, not a directory" in line
    assert 'Errno' not in line
    assert blocker.read_text() == 'not a directory\n'


def test_the_no_valid_split_error_has_no_usage_line(tiny_data, tmp_path, capsys):
    write_mmrec(tiny_data, tmp_path, 'novalid')
    path = tmp_path / 'novalid' / 'novalid.inter'
    lines = path.read_text().splitlines()
    path.write_text('\n'.join([lines[0]] + [
        line[:-1] + '0' if line.endswith('\t1') else line for line in lines[1:]]) + '\n')
    out = tmp_path / 'run'
    assert main(['train', '--data', str(tmp_path), '--dataset', 'novalid', '--output',
                 str(out), '--train.max-epochs', '1', *FAST]) == 2
    line = _one_line(capsys.readouterr().err)
    assert 'novalid has no validation interactions (x_label 1)' in line
    assert '--data.allow-no-valid true' in line
    # an error in the options themselves still shows how the command is used
    assert main(['train', '--synthetic', 'tiny', '--train.lr', '-1', *FAST]) == 2
    assert capsys.readouterr().err.startswith('usage: ')


# ---------------------------------------------------------------------------------
# examples/amazon_baby.py
# ---------------------------------------------------------------------------------
def _amazon_baby():
    spec = importlib.util.spec_from_file_location('amazon_baby',
                                                  EXAMPLES / 'amazon_baby.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('flag', ['--train.num-threads', '--num-threads'])
def test_amazon_baby_takes_the_thread_count(tmp_path, monkeypatch, capsys, flag):
    baby = _amazon_baby()
    seen = {}

    def fake_run(config, out, **kw):  # no Baby-scale training in the test suite
        seen['train'] = config.train
        raise SystemExit(0)

    monkeypatch.setattr(baby, 'run', fake_run)
    monkeypatch.setattr(baby, 'REPO', tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        baby.main(['--quick', flag, '1', '--output', str(tmp_path / 'run')])
    assert seen['train'].num_threads == 1


def test_amazon_baby_refuses_a_bad_thread_count(tmp_path, monkeypatch, capsys):
    baby = _amazon_baby()
    monkeypatch.setattr(baby, 'REPO', tmp_path)
    monkeypatch.chdir(tmp_path)
    assert baby.main(['--quick', '--train.num-threads', '100000']) == 2
    err = capsys.readouterr().err
    assert 'amazon_baby.py: error: train.num_threads: expected an integer from 0' in err
    assert 'Traceback' not in err


# ---------------------------------------------------------------------------------
# The ablation figure
# ---------------------------------------------------------------------------------
def test_the_ablation_figure_has_y_labels_and_a_legend_beside_the_bars(
        tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')  # the viz extra, installed by the test extra
    from mambarec_pyg.config import DataConfig
    from mambarec_pyg.experiments import plots
    from mambarec_pyg.experiments.ablation import SETTINGS
    from mambarec_pyg.experiments.paper import METRICS
    from mambarec_pyg.experiments.presets import resolve_row
    from mambarec_pyg.experiments.report import Stat
    from mambarec_pyg.experiments.runner import DatasetSpec, Setup
    from mambarec_pyg.experiments.sweep import Setting, settings_bars

    datasets = [DatasetSpec('synthetic-tiny', DataConfig(synthetic='tiny')),
                DatasetSpec('baby', DataConfig(dataset='baby'), 'baby')]
    setup = Setup(output=tmp_path, datasets=datasets, quick=True)
    rows = [resolve_row('mambarec')]
    settings = [Setting(k, label, dict(o)) for k, label, o in SETTINGS]
    # close values, as an ablation gives: the bars reach the top of the axes
    stats = {(ds.label, rows[0].name, s.label): {
        m: Stat(0.10 + 0.01 * i + 0.002 * j, 0.004, [0.1, 0.1])
        for j, m in enumerate(METRICS)} for ds in datasets
        for i, s in enumerate(settings)}
    figures = []
    real_save = plots.save

    def keep(fig, path, dpi=None):
        figures.append(fig)
        return real_save(fig, path, dpi)

    monkeypatch.setattr(plots, 'save', keep)
    path = settings_bars(setup, rows, settings, stats, METRICS,
                         tmp_path / 'ablation.png', 'Figure 3: alignment ablation')
    assert Path(path).is_file()
    fig = figures[0]
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_ylabel() == 'test metric (mean over seeds)'
        assert ax.get_legend() is None  # no legend over the bars
    assert len(fig.legends) == 1
    legend = fig.legends[0]
    names = [t.get_text() for t in legend.get_texts()]
    assert names == ['R@10', 'R@20', 'N@10', 'N@20']
    assert len({round(t.get_window_extent().y0) for t in legend.get_texts()}) == 1
    box = legend.get_window_extent()
    for ax in axes:
        assert not box.overlaps(ax.get_window_extent()), 'the legend covers a panel'
