"""Every experiment end to end in --quick mode on ``tiny`` (1-2 epochs, few cells):
tables with one row per model or setting and finite numbers, figures, summary,
resuming without rerunning anything, and the ``plot`` command."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from mambarec_pyg.cli import main
from mambarec_pyg.experiments import run_experiment, synthetic_setup
from mambarec_pyg.experiments.presets import get_preset, unregister_preset

FAST = ['--quick', '--train.max-epochs', '1', '--quiet']
TABLE2_MODELS = ['popularity', 'bpr', 'lightgcn', 'mambarec']


def _csv(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _finite(x) -> bool:
    return x not in (None, '') and math.isfinite(float(x))


def _mtimes(out: Path):
    return {p: p.stat().st_mtime_ns for p in (out / 'runs').rglob('*')
            if p.name in ('results.json', 'best.pt', 'last.pt')}


@pytest.fixture(scope='module')
def table2(tmp_path_factory):
    out = tmp_path_factory.mktemp('exp') / 'table2'
    assert main(['experiment', 'table2', '--output', str(out), '--models',
                 *TABLE2_MODELS, *FAST]) == 0
    return out


def test_table2_rows_numbers_and_files(table2):
    for name in ('table2.md', 'table2.csv', 'table2.json', 'table2.png',
                 'summary.json'):
        assert (table2 / name).is_file(), name
    rows = _csv(table2 / 'table2.csv')
    assert [r['row'] for r in rows[::4]] == TABLE2_MODELS
    assert {r['metric'] for r in rows} == {'recall@10', 'recall@20', 'ndcg@10',
                                           'ndcg@20'}
    assert all(_finite(r['mean']) and r['runs'] for r in rows)
    # best and second best are marked per metric
    for metric in ('recall@20', 'ndcg@20'):
        marked = [r['mark'] for r in rows if r['metric'] == metric]
        assert marked.count('best') >= 1 and 'second' in marked
    table = json.loads((table2 / 'table2.json').read_text())
    ds = table['datasets']['synthetic-tiny']
    assert ds['synthetic'] and ds['paper_dataset'] is None
    assert set(ds['rows']) == set(TABLE2_MODELS)
    assert ds['best_baseline'] in ('popularity', 'bpr', 'lightgcn')
    tests = ds['significance']['mambarec']['tests']['recall@20']
    assert tests['n'] == 100 and 0 <= tests['t_pvalue'] <= 1
    assert 0 <= tests['wilcoxon_pvalue'] <= 1
    assert 'percent' in ds['improvement']['mambarec']['recall@20']
    md = (table2 / 'table2.md').read_text()
    assert 'NOT comparable' in md and 'paired t-test' in md and 'Wilcoxon' in md
    assert '**' in md and '<u>' in md and '† not in the paper' in md
    # every number names its runs, and the summary their configurations
    summary = json.loads((table2 / 'summary.json').read_text())
    assert summary['status'] == 'complete' and not summary['comparable_with_paper']
    assert summary['command'][:3] == ['mambarec', 'experiment', 'table2']
    cells = {c['directory']: c for c in summary['cells']}
    run = ds['rows']['mambarec']['metrics']['recall@20']['runs'][0]
    assert cells[run]['config']['model']['name'] == 'mambarec'
    assert cells[run]['config']['train']['max_epochs'] == 1
    assert (table2 / run / 'per_user_test.npz').is_file()


def test_resuming_a_finished_experiment_reruns_nothing(table2, capsys):
    before = _mtimes(table2)
    setup = synthetic_setup(table2, models=TABLE2_MODELS, quick=True,
                            train={'max_epochs': 1}, quiet=True)
    result = run_experiment('table2', setup)
    assert len(result.results) == 4 and all(r.reused for r in result.results)
    assert _mtimes(table2) == before
    # another setting of a finished cell is refused, naming it
    code = main(['experiment', 'table2', '--output', str(table2), '--models', 'bpr',
                 '--train.lr', '0.01', *FAST])
    assert code == 2
    assert 'train.lr: 0.001 there, 0.01 now' in capsys.readouterr().err


def test_the_paper_numbers_beside_ours_on_a_paper_dataset(tmp_path, tiny_data):
    # an MMRec directory called 'baby' gets the paper's Table 2 column
    from mambarec_pyg.data import write_mmrec
    write_mmrec(tiny_data, tmp_path / 'data', 'baby')
    out = tmp_path / 'out'
    assert main(['experiment', 'table2', '--data', str(tmp_path / 'data'),
                 '--datasets', 'baby', '--output', str(out), '--models', 'bpr',
                 'mambarec', '--no-figures', *FAST]) == 0
    rows = _csv(out / 'table2.csv')
    paper = {(r['row'], r['metric']): float(r['paper']) for r in rows}
    assert paper[('mambarec', 'recall@20')] == 0.1013
    assert paper[('bpr', 'ndcg@10')] == 0.0214
    md = (out / 'table2.md').read_text()
    assert 'paper R@20' in md and "the paper's baby" in md
    imp = json.loads((out / 'table2.json').read_text())['datasets']['baby'][
        'improvement']['mambarec']['recall@20']
    assert imp['paper_percent'] == pytest.approx(100 * (0.1013 - 0.0595) / 0.0595)
    assert not (out / 'table2.png').exists()


def test_table3_and_ablation(tmp_path):
    for name, settings in (('table3', ['text only', 'visual only', 'text + visual']),
                           ('ablation', ['full', 'w/o LA', 'w/o GA'])):
        out = tmp_path / name
        figures = [] if name == 'table3' else ['--no-figures']
        assert main(['experiment', name, '--output', str(out), *figures, *FAST]) == 0
        rows = _csv(out / f'{name}.csv')
        assert [r['setting'] for r in rows[::4]] == settings
        assert all(_finite(r['mean']) for r in rows)
        assert (out / f'{name}.png').is_file() == (name == 'table3')
        table = json.loads((out / f'{name}.json').read_text())
        sig = table['datasets']['synthetic-tiny']['significance']
        assert len(sig) == 2 and all('recall@20' in v['tests'] for v in sig.values())
    summary = json.loads((tmp_path / 'table3' / 'summary.json').read_text())
    mods = sorted(tuple(c['config']['data']['modalities']) for c in summary['cells'])
    assert mods == [('image', ), ('image', 'text'), ('text', )]


def test_sensitivity_shares_the_default_run(tmp_path):
    out = tmp_path / 'sens'
    assert main(['experiment', 'sensitivity', '--output', str(out), '--cl-weights',
                 '0.01,0.1', '--reduction-factors', '4,8', '--mmd-weights', '0.15',
                 *FAST]) == 0
    rows = _csv(out / 'sensitivity.csv')
    fig4 = [r for r in rows if r['figure'] == '4' and r['metric'] == 'recall@20']
    fig5 = [r for r in rows if r['figure'] == '5' and r['metric'] == 'recall@20']
    assert [float(r['cl_weight']) for r in fig4] == [0.01, 0.1]
    assert [int(r['reduction_factor']) for r in fig5] == [4, 8]
    assert all(_finite(r['mean']) for r in fig4 + fig5)
    # lambda_cl = 0.01 and (r = 8, lambda_mmd = 0.15) are the default: one run
    assert fig4[0]['runs'] == fig5[1]['runs']
    trained = [p for p in (out / 'runs').rglob('results.json')]
    assert len(trained) == 3
    for name in ('figure4_cl_weight.png', 'figure5_reduction_mmd.png'):
        assert (out / name).is_file()


def test_reduction_reports_parameters_and_time(tmp_path):
    out = tmp_path / 'red'
    assert main(['experiment', 'reduction', '--output', str(out),
                 '--reduction-factors', '1,8', *FAST]) == 0
    rows = _csv(out / 'reduction.csv')
    assert [int(r['reduction_factor']) for r in rows] == [1, 8]
    r1, r8 = rows
    assert float(r1['parameters_percent']) == 100.0
    assert float(r1['epoch_train_percent']) == 100.0
    # the image projection 64 -> 64/r -> 64 shrinks with r
    assert int(r8['parameters']) < int(r1['parameters'])
    assert all(_finite(r[k]) for r in rows for k in ('recall@20', 'epoch_train_s'))
    assert (out / 'reduction.png').is_file()


def test_embeddings_with_models(tmp_path):
    out = tmp_path / 'emb'
    assert main(['experiment', 'embeddings', '--output', str(out), '--models',
                 'mambarec', 'bpr', *FAST]) == 0
    rows = _csv(out / 'embeddings.csv')
    assert [r['row'] for r in rows] == ['mambarec', 'bpr']
    for r in rows:
        assert int(r['items']) == 60
        for key in ('uniformity_d', 'uniformity_2d', 'angle_kl_from_uniform',
                    'topic_silhouette'):
            assert _finite(r[key]), key
    assert (out / 'embeddings_synthetic-tiny.png').is_file()
    assert len(list((out / 'embeddings').glob('*.npz'))) == 2


def test_embeddings_falls_back_when_vbpr_is_missing(monkeypatch, capsys):
    from mambarec_pyg.experiments.embeddings import Embeddings
    from mambarec_pyg.models import registry
    names = [n for n in registry.list_models() if n != 'vbpr']
    monkeypatch.setattr(registry, 'list_models', lambda: names)
    setup = synthetic_setup('unused', quick=True)
    rows = [p.name for p in Embeddings().rows(setup)]
    assert rows[0] == 'mambarec' and len(rows) == 2 and 'vbpr' not in rows
    err = capsys.readouterr().err
    assert "'vbpr'" in err and 'not registered' in err and '--models' in err


def test_presets_from_a_file_become_rows(tmp_path):
    spec = tmp_path / 'presets.yaml'
    spec.write_text('mf-strong-reg:\n  model: bpr\n  description: BPR, reg 0.1\n'
                    '  overrides: {model.reg_weight: 0.1}\n')
    out = tmp_path / 'p'
    try:
        assert main(['experiment', 'table2', '--output', str(out), '--models', 'bpr',
                     'mf-strong-reg', '--presets', str(spec), '--no-figures',
                     *FAST]) == 0
        assert get_preset('mf-strong-reg').overrides == {'model.reg_weight': 0.1}
    finally:
        unregister_preset('mf-strong-reg')
    rows = _csv(out / 'table2.csv')
    assert [r['row'] for r in rows[::4]] == ['bpr', 'mf-strong-reg']
    summary = json.loads((out / 'summary.json').read_text())
    regs = {c['row']: c['config']['model']['reg_weight'] for c in summary['cells']}
    assert regs['mf-strong-reg'] == 0.1 and regs['bpr'] != 0.1


def test_an_interrupted_experiment_resumes_the_interrupted_run(tmp_path, monkeypatch,
                                                               capsys):
    from mambarec_pyg.train import experiment as train_experiment
    real_run = train_experiment.run

    def stop_after_first_epoch(trainer, record):
        raise KeyboardInterrupt

    def interrupted_run(config, out, **kw):
        return real_run(config, out, callbacks=[stop_after_first_epoch], **kw)

    out = tmp_path / 'int'
    args = ['experiment', 'table2', '--output', str(out), '--models', 'bpr',
            '--train.checkpoint-interval-s', '0', '--no-figures', '--quick',
            '--train.max-epochs', '2']
    monkeypatch.setattr(train_experiment, 'run', interrupted_run)
    assert main(args) == 130
    assert 'run the same command again to resume' in capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['status'] == 'interrupted'
    monkeypatch.setattr(train_experiment, 'run', real_run)
    assert main(args + ['--quiet']) == 0
    log = (out / 'runs' / 'synthetic-tiny' / 'bpr' / 'seed-999' / 'train.log')
    assert 'resumed from' in log.read_text()
    assert json.loads((out / 'summary.json').read_text())['status'] == 'complete'


def test_progress_lines(tmp_path, capsys):
    out = tmp_path / 'prog'
    args = ['experiment', 'ablation', '--output', str(out), '--quick',
            '--train.max-epochs', '1', '--no-figures']
    assert main(args) == 0
    err = capsys.readouterr().err
    assert '[1/3]' in err and '[3/3]' in err and 'elapsed' in err and 'left' in err
    assert main(args) == 0
    assert err.count('reused') == 0 and capsys.readouterr().err.count('reused') == 3


def test_plot_overlays_runs(table2, tmp_path, capsys):
    from mambarec_pyg.experiments.plots import find_runs
    runs = table2 / 'runs' / 'synthetic-tiny'
    png = tmp_path / 'curves.png'
    assert main(['plot', str(runs / 'mambarec' / 'seed-999'),
                 str(runs / 'bpr' / 'seed-999'), '--output', str(png)]) == 0
    assert png.is_file() and png.stat().st_size > 1000
    assert '2 run(s)' in capsys.readouterr().out
    # a directory without results.json means every run below it
    assert [p.parent.name for p in find_runs([table2])] == sorted(TABLE2_MODELS)
    assert main(['plot', str(tmp_path / 'nothing')]) == 1


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == 'matplotlib' or name.startswith('matplotlib.'):
            raise ImportError('No module named matplotlib')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_matplotlib)
    code = main(['experiment', 'ablation', '--output', str(tmp_path / 'x'), *FAST])
    assert code == 1
    err = capsys.readouterr().err
    assert "pip install 'mambarec-pyg[viz]'" in err and '--no-figures' in err
    assert not (tmp_path / 'x' / 'runs').exists()  # stopped before any training


def test_bad_command_lines(tmp_path, capsys):
    assert main(['experiment', 'table2', '--output', str(tmp_path)]) == 2
    assert 'no data' in capsys.readouterr().err
    assert main(['experiment', 'table2', '--quick', '--models', 'mambarex',
                 '--output', str(tmp_path)]) == 2
    assert "did you mean 'mambarec'" in capsys.readouterr().err
    assert main(['experiment', 'ablation', '--quick', '--models', 'bpr',
                 '--output', str(tmp_path)]) == 2
    assert 'MambaRec rows' in capsys.readouterr().err
    assert main(['experiment', 'tabel2']) == 2
    assert main(['experiment', 'table2', '--synthetic', 'tiny', '--data', 'd']) == 2
    assert get_preset('mambarec-warmup').overrides == {'model.cl_warmup_epochs': 10}


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    from mambarec_pyg.train import experiment as train_experiment
    real_run = train_experiment.run

    def broken_bpr(config, out, **kw):
        if config.model.name == 'bpr':
            raise RuntimeError('something broke inside the model')
        return real_run(config, out, **kw)

    monkeypatch.setattr(train_experiment, 'run', broken_bpr)
    out = tmp_path / 'f'
    assert main(['experiment', 'table2', '--output', str(out), '--models', 'bpr',
                 'lightgcn', '--no-figures', *FAST]) == 1
    assert 'something broke' in capsys.readouterr().err
    rows = _csv(out / 'table2.csv')
    assert [r['row'] for r in rows[::4]] == ['bpr', 'lightgcn']
    assert rows[0]['mean'] == '' and _finite(rows[4]['mean'])
    md = (out / 'table2.md').read_text()
    assert '## Failed runs' in md and 'RuntimeError: something broke' in md
    error = out / 'runs' / 'synthetic-tiny' / 'bpr' / 'seed-999' / 'error.txt'
    assert 'Traceback' in error.read_text()
    assert json.loads((out / 'summary.json').read_text())['status'] == 'incomplete'


def test_table2_search_selects_by_valid_then_runs_the_other_seeds(tmp_path,
                                                                  monkeypatch):
    from mambarec_pyg.models.bpr import BPRConfig
    monkeypatch.setattr(BPRConfig, 'GRID', {'model.reg_weight': [1.0, 1e-4]})
    out = tmp_path / 's'
    assert main(['experiment', 'table2', '--output', str(out), '--models', 'bpr',
                 '--search', '--seeds', '2', '--no-figures', *FAST]) == 0
    table = json.loads((out / 'table2.json').read_text())
    search = table['search']['synthetic-tiny/bpr']
    points = {p['point']: p for p in search['points']}
    assert set(points) == {'reg_weight=1.0', 'reg_weight=0.0001'}
    best = max(points.values(), key=lambda p: p['valid recall@20'])
    assert search['selected'] == best['point']
    runs = table['datasets']['synthetic-tiny']['rows']['bpr']['metrics'][
        'recall@20']['runs']
    assert runs == [best['run'],
                    f"runs/synthetic-tiny/bpr/selected/{best['point']}/seed-1000"]
    summary = json.loads((out / 'summary.json').read_text())
    by_dir = {c['directory']: c for c in summary['cells']}
    assert by_dir[runs[1]]['config']['train']['seed'] == 1000
    assert by_dir[runs[1]]['config']['model']['reg_weight'] == \
        by_dir[runs[0]]['config']['model']['reg_weight']


def test_a_finished_run_is_continued_to_more_epochs_never_cut_back(tmp_path, capsys):
    out = tmp_path / 'e'
    base = ['experiment', 'table2', '--output', str(out), '--models', 'bpr',
            '--no-figures', '--quick', '--quiet']
    assert main(base + ['--train.max-epochs', '2']) == 0
    assert main(base + ['--train.max-epochs', '3']) == 0
    results = out / 'runs' / 'synthetic-tiny' / 'bpr' / 'seed-999' / 'results.json'
    assert json.loads(results.read_text())['epochs'] == 3
    assert main(base + ['--train.max-epochs', '1']) == 2
    assert 'train.max_epochs: 3 there, 1 now' in capsys.readouterr().err
