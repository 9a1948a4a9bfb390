"""Plan -> run -> collect -> report: the report reads the collected files only.

* no experiment's report takes the runner (nor do the comparisons it makes);
* after an experiment ran, its report made again from a read-only
  :class:`Collected` gives the same files while building a model is impossible;
* a missing (or stale) collected file stops the report with an error naming it,
  and running the command again collects it again.
"""
from __future__ import annotations

import inspect
import os

import pytest

from mambarec_pyg.errors import CollectedFileMissing, MambaRecError
from mambarec_pyg.experiments import (EXPERIMENTS, Collected, get_experiment,
                                      run_experiment, synthetic_setup)
from mambarec_pyg.experiments import compare, sweep, table2
from mambarec_pyg.train import executors


def _setup(out, models, **options):
    return synthetic_setup(out, quick=True, quiet=True, figures=False,
                           train={'max_epochs': 1}, models=models, options=options)


def _no_models(monkeypatch):
    """Building or loading a model from here on fails the test."""
    import mambarec_pyg.train.experiment as ex

    def refuse(*args, **kwargs):
        raise AssertionError('the report built or loaded a model')
    monkeypatch.setattr(ex, 'build_model', refuse)
    monkeypatch.setattr(ex, 'load_run', refuse)
    monkeypatch.setattr(executors, 'save_per_user', refuse)


def _outputs(root, name):
    return {s: (root / f'{name}.{s}').read_bytes() for s in ('md', 'csv', 'json')}


@pytest.mark.parametrize('name', sorted(EXPERIMENTS))
def test_no_report_takes_the_runner(name):
    params = inspect.signature(EXPERIMENTS[name].report).parameters
    assert list(params) == ['self', 'setup', 'results', 'collected']
    assert 'Runner' not in str(params['collected'].annotation)


@pytest.mark.parametrize('function', [compare.compare_runs, sweep.settings_table,
                                      table2.compare])
def test_the_comparisons_take_the_collected_files_not_the_runner(function):
    params = list(inspect.signature(function).parameters)
    assert 'runner' not in params and 'collected' in params


def test_table2_report_reads_collected_files_only(tmp_path, monkeypatch):
    setup = _setup(tmp_path / 't2', ['bpr', 'mambarec'])
    first = run_experiment('table2', setup)
    assert first.status == 'complete'
    before = _outputs(setup.output, 'table2')
    significance = first.table['datasets']['synthetic-tiny']['significance']
    assert significance['mambarec']['tests']  # the per-user files were read

    _no_models(monkeypatch)
    again = get_experiment('table2').report(setup, first.results,
                                            Collected(setup.output))
    assert _outputs(setup.output, 'table2') == before
    assert again.table == first.table

    lost = next(r for r in first.results if r.cell.row == 'mambarec').directory \
        / executors.PER_USER_FILE
    lost.unlink()
    with pytest.raises(CollectedFileMissing) as e:
        get_experiment('table2').report(setup, first.results, Collected(setup.output))
    assert str(lost) in str(e.value) and 'run the same command again' in str(e.value)
    assert isinstance(e.value, MambaRecError)
    assert not lost.exists()  # the report did not recompute it

    monkeypatch.undo()
    rerun = run_experiment('table2', setup)  # collects it again, trains nothing
    assert lost.is_file() and all(r.reused for r in rerun.results)
    assert _outputs(setup.output, 'table2') == before


def test_a_stale_per_user_file_is_an_error(tmp_path):
    setup = _setup(tmp_path / 't3', ['bpr'])
    res = run_experiment('table2', setup).results[0]
    path = res.directory / executors.PER_USER_FILE
    assert Collected(setup.output).per_user(res)['users'].size > 0
    best = res.directory / 'best.pt'
    t = path.stat().st_mtime_ns
    os.utime(best, ns=(t + 10**9, t + 10**9))
    with pytest.raises(CollectedFileMissing, match='older than the best.pt'):
        Collected(setup.output).per_user(res)


def test_reduction_and_embeddings_reports_read_their_collected_files(tmp_path,
                                                                     monkeypatch):
    pytest.importorskip('sklearn')
    red = _setup(tmp_path / 'red', ['mambarec'], reduction_factors=[1, 8])
    emb = _setup(tmp_path / 'emb', ['bpr'])
    done = {n: run_experiment(n, s) for n, s in (('reduction', red),
                                                 ('embeddings', emb))}
    before = {n: _outputs(s.output, n) for n, s in (('reduction', red),
                                                    ('embeddings', emb))}
    _no_models(monkeypatch)
    import mambarec_pyg.experiments.embeddings as em
    monkeypatch.setattr(em, 'tsne_2d', lambda *a, **k: pytest.fail('t-SNE rerun'))
    for name, setup in (('reduction', red), ('embeddings', emb)):
        get_experiment(name).report(setup, done[name].results,
                                    Collected(setup.output))
        assert _outputs(setup.output, name) == before[name]

    params = red.output / 'parameters.json'
    params.unlink()
    with pytest.raises(CollectedFileMissing, match='parameters.json'):
        get_experiment('reduction').report(red, done['reduction'].results,
                                           Collected(red.output))
    points = next((emb.output / 'embeddings').glob('*.npz'))
    points.unlink()
    with pytest.raises(CollectedFileMissing) as e:
        get_experiment('embeddings').report(emb, done['embeddings'].results,
                                            Collected(emb.output))
    assert str(points) in str(e.value)
