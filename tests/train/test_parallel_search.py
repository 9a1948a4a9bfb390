"""The grid search on executors and on Optuna, and the tracking files of every run:
2 workers give the points of 1; an Optuna study in OUTPUT/optuna.db is shared by two
commands and trains no point twice; metrics.csv / metrics.jsonl hold one row per
epoch of results.json's history; TensorBoard and MLflow write their files."""
from __future__ import annotations

import json
import math

import pytest

from mambarec_pyg.config import Config, ConfigError, DataConfig, TrainConfig
from mambarec_pyg.models.registry import get_config_class
from mambarec_pyg.train.executors import ExecutorOptions
from mambarec_pyg.train.search import grid_search
from mambarec_pyg.train.tracking import read_history_csv

GRID = {'model.reg_weight': [1e-4, 1e-2, 1.0]}


def _config() -> Config:
    return Config(data=DataConfig(synthetic='tiny'), model=get_config_class('bpr')(),
                  train=TrainConfig(device='cpu', max_epochs=2, batch_size=128,
                                    num_threads=1))


def _points(result):
    return [(p['name'], p['valid'], p['test'], p['best_epoch']) for p in result.points]


@pytest.fixture(scope='module')
def one(tmp_path_factory):
    out = tmp_path_factory.mktemp('grid') / 'one'
    return grid_search(None, _config(), GRID, out)


def test_two_workers_give_the_points_of_one(one, tmp_path):
    two = grid_search(None, _config(), GRID, tmp_path / 'two',
                      executor=ExecutorOptions(workers=2))
    assert _points(two) == _points(one)
    assert two.selected['name'] == one.selected['name']
    saved = json.loads((tmp_path / 'two' / 'search.json').read_text())
    assert saved['executor'] == {'kind': 'local', 'workers': 2}
    assert saved['selected']['name'] == one.selected['name']
    # run again: every point reused
    again = grid_search(None, _config(), GRID, tmp_path / 'two', resume=True,
                        executor=ExecutorOptions(workers=2))
    assert all(p.get('reused') for p in again.points)
    with pytest.raises(ConfigError, match='already holds runs of this search'):
        grid_search(None, _config(), GRID, tmp_path / 'two',
                    executor=ExecutorOptions())


def test_optuna_study_is_shared_and_trains_no_point_twice(one, tmp_path):
    optuna = pytest.importorskip('optuna')
    out = tmp_path / 'tpe'
    first = grid_search(None, _config(), GRID, out, sampler='optuna', trials=2)
    stamps = {p['name']: (out / p['name'] / 'results.json').stat().st_mtime_ns
              for p in first.points}
    # a second command on the same directory continues the same study
    second = grid_search(None, _config(), GRID, out, resume=True, sampler='optuna',
                         trials=4)
    study = optuna.load_study(study_name='search',
                              storage=f'sqlite:///{out / "optuna.db"}')
    complete = [t for t in study.trials if t.state.name == 'COMPLETE']
    assert len(complete) == 4
    names = {p['name'] for p in second.points}
    assert set(stamps) <= names  # the first command's points are in the result
    for name, stamp in stamps.items():  # ... and were not trained again
        assert (out / name / 'results.json').stat().st_mtime_ns == stamp
    # each trial's value is its point's valid metric, as the plain grid gave it
    by_name = {p['name']: p for p in one.points}
    for t in complete:
        name = f"reg_weight={t.params['model.reg_weight']}"
        assert t.value == by_name[name]['valid']['recall@20']
    best = max(second.points, key=lambda p: p['valid']['recall@20'])
    assert second.selected['valid'] == best['valid']
    saved = json.loads((out / 'search.json').read_text())
    assert saved['sampler'] == 'optuna-tpe' and saved['study'].endswith('optuna.db')


def test_optuna_grid_sampler_covers_the_grid(one, tmp_path):
    pytest.importorskip('optuna')
    result = grid_search(None, _config(), GRID, tmp_path / 'g', sampler='optuna',
                         optuna_sampler='grid', executor=ExecutorOptions(workers=1))
    assert sorted(_points(result)) == sorted(_points(one))


# ---------------------------------------------------------------------------------
# Tracking
# ---------------------------------------------------------------------------------
def _close(text: str, value) -> bool:
    if value is None:
        return text == ''
    if isinstance(value, bool):
        return text == str(value)
    return math.isclose(float(text), float(value), rel_tol=1e-12, abs_tol=0.0)


def test_metrics_files_hold_one_row_per_epoch_of_the_history(one):
    for p in one.points:
        run = p['output_dir']
        record = json.loads(open(f'{run}/results.json').read())
        history = record['history']
        rows = read_history_csv(f'{run}/metrics.csv')
        assert len(rows) == len(history) == record['epochs']
        for row, epoch in zip(rows, history):
            assert int(row['epoch']) == epoch['epoch']
            for part, value in epoch['loss'].items():
                assert _close(row[f'loss.{part}'], value)
            for name, value in epoch['valid'].items():
                assert _close(row[f'valid.{name}'], value)
            for name, value in (epoch.get('test') or {}).items():
                assert _close(row[f'test.{name}'], value)
            assert _close(row['best'], epoch['best'])
        lines = open(f'{run}/metrics.jsonl').read().splitlines()
        assert [json.loads(x) for x in lines] == history


def test_tensorboard_and_mlflow_write_every_epoch(tmp_path):
    pytest.importorskip('tensorboard')
    pytest.importorskip('mlflow')
    grid = {'model.reg_weight': [1e-4]}
    out = tmp_path / 'tracked'
    result = grid_search(None, _config(), grid, out, log=('tensorboard', 'mlflow'))
    name = result.points[0]['name']
    events = list((out / 'tensorboard' / name).glob('events.out.tfevents.*'))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator)
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    record = json.loads((out / name / 'results.json').read_text())
    steps = [e.step for e in acc.Scalars('valid/recall_at_20')] if \
        'valid/recall_at_20' in acc.Tags()['scalars'] else \
        [e.step for e in acc.Scalars('valid.recall_at_20')]
    assert steps == [h['epoch'] for h in record['history']]
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=(out / 'mlruns').resolve().as_uri())
    experiment = client.get_experiment_by_name(f'search {out.resolve()}')
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == [name]
    run = runs[0]
    assert run.data.params['model.reg_weight'] == '0.0001'
    assert run.data.params['train.max_epochs'] == '2'
    values = client.get_metric_history(run.info.run_id, 'valid.recall_at_20')
    assert [m.step for m in values] == [h['epoch'] for h in record['history']]
    assert [m.value for m in values] == pytest.approx(
        [h['valid']['recall@20'] for h in record['history']])
