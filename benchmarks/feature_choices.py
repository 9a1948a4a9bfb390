"""What each feature choice does to the metric and to the memory: raw trainable
tables, frozen tables, PCA-reduced tables and float16 storage, on the Baby-scale
synthetic data.

For each model (FREEDOM and MambaRec by default) and each choice, trains a full run
(early stopping as configured) in a fresh process and records the test metric, the
epochs, the time per epoch and the process's peak memory (maximum resident set):

* ``raw`` -- the defaults (raw 4096-d image and 384-d text tables, trained);
* ``frozen`` -- ``model.trainable_features false``;
* ``pca<D>`` -- ``data.feature_dim D`` (each modality reduced by PCA), trained;
* ``pca<D>-frozen`` -- both;
* ``float16`` -- ``data.feature_dtype float16`` (the data's tables in half
  precision; the model's own tables stay float32).

Prints a table and writes ``benchmarks/results/feature_choices.json``.

    python benchmarks/feature_choices.py [--preset baby] [--pca 256 64]
    python benchmarks/feature_choices.py --tiny      # a smoke run
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def choices(pca_dims):
    out = {'raw': {}, 'frozen': {'model.trainable_features': False},
           'float16': {'data.feature_dtype': 'float16'}}
    for d in pca_dims:
        out[f'pca{d}'] = {'data.feature_dim': d}
        out[f'pca{d}-frozen'] = {'data.feature_dim': d,
                                 'model.trainable_features': False}
    return out


def child(spec: dict) -> dict:
    from mambarec_pyg.config import Config, from_dict
    from mambarec_pyg.train.experiment import run
    config = {'data': {'synthetic': spec['preset']},
              'model': {'name': spec['model']},
              'train': {'max_epochs': spec['max_epochs'], 'device': 'cpu'}}
    for key, value in spec['options'].items():
        section, name = key.split('.')
        config[section][name] = value
    cfg = from_dict(Config, config)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='mambarec-features-') as out:
        result = run(cfg, out, quiet=True)
    return {'test': result.test, 'epochs': result.epochs,
            'best_epoch': result.best_epoch, 'total_s': time.perf_counter() - t,
            'epoch_s': sum(h['train_s'] for h in result.history) /
            max(1, len(result.history)),
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='baby')
    parser.add_argument('--models', nargs='+', default=['freedom', 'mambarec'])
    parser.add_argument('--pca', type=int, nargs='*', default=[256, 64])
    parser.add_argument('--max-epochs', type=int, default=1000)
    parser.add_argument('--metric', default='recall@20')
    parser.add_argument('--tiny', action='store_true', help='smoke run')
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' /
                                             'feature_choices.json'))
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print('RESULT ' + json.dumps(child(json.loads(args.child))))
        return {}
    if args.tiny:
        args.preset, args.max_epochs, args.pca = 'tiny', 2, [16]
    rows = []
    for model in args.models:
        for name, options in choices(args.pca).items():
            spec = {'preset': args.preset, 'model': model, 'options': options,
                    'max_epochs': args.max_epochs}
            proc = subprocess.run([sys.executable, __file__, '--child',
                                   json.dumps(spec)], capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr.strip().splitlines() or ['?'])[-1]
                rows.append({'model': model, 'choice': name, 'error': tail})
                print(f'{model:10} {name:14} failed: {tail}')
                continue
            row = {'model': model, 'choice': name, 'options': options,
                   **json.loads(lines[-1][len('RESULT '):])}
            rows.append(row)
            print(f"{model:10} {name:14} {args.metric} {row['test'][args.metric]:.4f} "
                  f"epochs {row['epochs']:4d} {row['epoch_s']:7.2f} s/epoch "
                  f"peak {row['peak_rss_mb']:7.0f} MB", flush=True)
    result = {'preset': args.preset, 'metric': args.metric, 'runs': rows}
    from mambarec_pyg.io import write_json
    write_json(args.out, result)
    return result


if __name__ == '__main__':
    main()
