"""``mambarec experiment`` and ``plot``.

::

    mambarec experiment table2 --data data --datasets baby sports clothing \\
                               --output runs/table2 --seeds 3
    mambarec experiment table2 --quick --models popularity bpr lightgcn mambarec
    mambarec experiment sensitivity --synthetic baby --output runs/sens
    mambarec experiment embeddings --quick --output runs/emb
    mambarec plot runs/table2/runs/baby/mambarec/seed-999 \\
                  runs/table2/runs/baby/bpr/seed-999

``--executor local|ray|slurm`` and ``--workers N`` run the cells at the same time
(:mod:`mambarec_pyg.train.executors`); the tables do not depend on them.
Running the same command again resumes: finished runs are reused, an interrupted one
continues from its last checkpoint. Exit codes: 0 success, 1 a failure (some runs
failed -- the tables are still written --, a missing file or plotting dependency), 2
a bad command line, 130 interrupted (run the same command again to resume).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

from .common import CommandError, _arg_type
from .flags import (add_executor_flags, add_section_flags, config_overrides,
                    executor_options)
from ..config import ConfigError, DataConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..experiments.runner import Setup

__all__ = ['add_parsers', 'cmd_experiment', 'cmd_plot', 'setup_from_args']

_SEED = 999


def add_parsers(subparsers, parser_class) -> None:
    """Add ``experiment`` (one sub-command per experiment) and ``plot`` to the
    ``mambarec`` parser."""
    from ..experiments import EXPERIMENTS
    e = subparsers.add_parser(
        'experiment', help="run one of the paper's experiments (tables and figures)",
        description="Run one of the MambaRec paper's experiments: each cell is a full "
        'training run in its own directory; running the command again resumes (finished '
        'runs are reused). Writes NAME.md/.csv/.json, the figures and summary.json '
        'into --output.', allow_abbrev=False)
    names = e.add_subparsers(dest='experiment', metavar='NAME', parser_class=parser_class)
    names.required = True
    for name, cls in EXPERIMENTS.items():
        p = names.add_parser(name, help=f'{cls.title}', allow_abbrev=False,
                             description=_describe(cls))
        _add_common(p, cls)
        g = p.add_argument_group(f'{name} options')
        known = {a.dest for a in p._actions}
        cls.add_arguments(g)
        own = tuple(a.dest for a in p._actions if a.dest not in known)
        p.set_defaults(func=cmd_experiment, _parser=p, _own_options=own)
    e.set_defaults(func=cmd_experiment, _parser=e)

    p = subparsers.add_parser(
        'plot', help='training curves of one or several runs',
        description='Plot every loss part and the valid metrics per epoch of one or '
        'several runs (their results.json), overlaid, as one PNG. A directory without '
        'results.json stands for every run below it (e.g. an experiment output).',
        allow_abbrev=False)
    p.add_argument('runs', nargs='+', metavar='RUN_DIR')
    p.add_argument('--output', metavar='FILE.png', help='the figure (default: '
                   'RUN_DIR/curves.png for one run, else curves.png here)')
    p.add_argument('--metrics', default='recall@20,ndcg@20', metavar='M1,M2',
                   help='valid metrics to plot (default: recall@20,ndcg@20)')
    p.add_argument('--labels', metavar='L1,L2', help='names of the runs in the legend '
                   '(default: their paths)')
    p.add_argument('--log-loss', action='store_true', help='logarithmic loss axes')
    p.set_defaults(func=cmd_plot, _parser=p)


def _describe(cls) -> str:
    doc = (sys.modules[cls.__module__].__doc__ or '').strip().split('\n\n')[0]
    return ' '.join(doc.split())


def _add_common(p: argparse.ArgumentParser, cls) -> None:
    d = p.add_argument_group('data')
    d.add_argument('--data', dest='root', metavar='ROOT', help='directory holding the '
                   'MMRec datasets ROOT/NAME/NAME.inter + *_feat.npy')
    d.add_argument('--datasets', nargs='+', metavar='NAME',
                   help=f'datasets under ROOT (default: {" ".join(cls.default_datasets)}'
                        f', as in the paper)')
    d.add_argument('--synthetic', nargs='+', metavar='PRESET',
                   help='synthetic presets instead (tiny, baby, sports, clothing); '
                        'never comparable with the paper')
    d.add_argument('--synthetic-seed', type=_arg_type(int), default=0, metavar='S',
                   help='seed of the synthetic data (default 0)')
    r = p.add_argument_group('runs')
    r.add_argument('--output', metavar='DIR', help='the experiment directory (default '
                   f'runs/{cls.name}, runs/{cls.name}-quick with --quick)')
    r.add_argument('--seeds', type=_arg_type(int), default=1, metavar='N',
                   help=f'training seeds per cell: {_SEED}, {_SEED + 1}, ... (default '
                        f'1; mean ± std over seeds when more)')
    from ..experiments.presets import list_presets
    presets = ', '.join(p.name for p in list_presets())
    r.add_argument('--models', nargs='+', metavar='NAME',
                   help='rows: registered models (`mambarec models`) and named '
                        f'presets ({presets}, or your own with --presets FILE)')
    r.add_argument('--presets', metavar='FILE.yaml', help='register named presets '
                   'from a YAML file (NAME: {model: M, overrides: {OPTION: VALUE}, '
                   'description: TEXT})')
    r.add_argument('--quick', action='store_true', help='a small version in minutes on '
                   'a CPU: synthetic tiny data unless --data/--synthetic is given, '
                   'at most 5 epochs, batches of 128, one thread')
    r.add_argument('--device', dest='cfg:train.device', metavar='D',
                   help='auto (CUDA when present), cpu, cuda or cuda:N')
    r.add_argument('--no-figures', dest='figures', action='store_false',
                   help='only the tables (no matplotlib needed)')
    r.add_argument('--quiet', action='store_true', help='no progress output')
    r.add_argument('--verbose', action='store_true', help="every run's epoch lines too")
    add_executor_flags(p, 'cells')
    t = p.add_argument_group('protocol (train options of every run; --train.FIELD '
                             'VALUE)')
    add_section_flags(t, 'train', TrainConfig, skip=('device', ),
                      notes={'seed': '(the first of --seeds) '})


# ---------------------------------------------------------------------------------
def setup_from_args(args: argparse.Namespace, experiment) -> 'Setup':
    """The :class:`~mambarec_pyg.experiments.runner.Setup` a command line asks for."""
    from ..experiments.paper import paper_dataset
    from ..experiments.runner import DatasetSpec, Setup
    if args.root and args.synthetic:
        raise ConfigError('give either --data ROOT [--datasets ...] or --synthetic '
                          'PRESET ..., not both')
    if args.synthetic and args.datasets:
        raise ConfigError('--datasets names MMRec datasets under --data ROOT; with '
                          '--synthetic, list the presets after it')
    if args.root or args.datasets:
        root = args.root or 'data'
        names = args.datasets or list(experiment.default_datasets)
        datasets = [DatasetSpec(n, DataConfig(root=root, dataset=n), paper_dataset(n))
                    for n in names]
    elif args.synthetic:
        datasets = [DatasetSpec(f'synthetic-{p}', DataConfig(
            synthetic=p, synthetic_seed=args.synthetic_seed)) for p in args.synthetic]
    elif args.quick:
        datasets = [DatasetSpec('synthetic-tiny', DataConfig(
            synthetic='tiny', synthetic_seed=args.synthetic_seed))]
    else:
        raise ConfigError('no data: give --data ROOT [--datasets NAME ...] (MMRec '
                          'datasets), --synthetic PRESET, or --quick (a small '
                          'synthetic run)')
    if args.seeds < 1:
        raise ConfigError(f'--seeds: expected a positive number of seeds, got '
                          f'{args.seeds}')
    train: Dict[str, Any] = config_overrides(args, 'train')
    first = train.pop('seed', _SEED)
    seeds = [first + i for i in range(args.seeds)]
    # the experiment's own options (Experiment.add_arguments); --search is Setup's
    options = {k: getattr(args, k) for k in getattr(args, '_own_options', ())
               if k != 'search' and getattr(args, k, None) is not None}
    for key, value in options.items():
        if isinstance(value, tuple) and not value:
            raise ConfigError(f'--{key.replace("_", "-")}: expected at least one value')
    output = Path(args.output) if args.output else Path('runs') / (
        experiment.name + ('-quick' if args.quick else ''))
    return Setup(output=output, datasets=datasets, seeds=seeds, train=train,
                 models=args.models, quick=args.quick,
                 search=bool(getattr(args, 'search', False)), quiet=args.quiet,
                 verbose=args.verbose, figures=args.figures, options=options,
                 command=command_line(args), executor=executor_options(args),
                 log=tuple(args.log or ()))


def command_line(args: argparse.Namespace) -> List[str]:
    """The command, rebuilt from the parsed options (those not at their default)."""
    out = ['mambarec', 'experiment', args.experiment]
    for action in args._parser._actions:
        if not action.option_strings or action.dest in ('help', ):
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            out.append(flag)
        elif isinstance(value, (list, tuple)) and action.nargs in ('+', '*'):
            out += [flag] + [str(v) for v in value]
        elif isinstance(value, tuple):
            out += [flag, ','.join(map(str, value))]
        else:
            out += [flag, str(value)]
    return out


def cmd_experiment(args: argparse.Namespace) -> int:
    from ..experiments import get_experiment
    from ..experiments.plots import MissingDependency
    from ..experiments.presets import load_presets
    if not getattr(args, 'experiment', None):
        raise CommandError('which experiment? (table2, table3, ablation, sensitivity, '
                           'reduction, embeddings)', 2)
    experiment = get_experiment(args.experiment)
    if args.presets:
        load_presets(args.presets)
    setup = setup_from_args(args, experiment)
    try:
        result = experiment.run(setup)
    except (MissingDependency, ImportError) as e:
        raise CommandError(str(e), 1) from None
    except KeyboardInterrupt:
        print(f'mambarec experiment {experiment.name}: interrupted; run the same '
              f'command again to resume (finished runs are kept, the interrupted one '
              f'continues from its last checkpoint)', file=sys.stderr)
        return 130
    if not setup.quiet:
        print(Path(result.files['markdown']).read_text())
    for key, path in result.files.items():
        print(f'{key}: {path}')
    if result.failed:
        print(f'mambarec experiment {experiment.name}: {len(result.failed)} run(s) '
              f'failed (see the tables and summary.json): '
              + '; '.join(f'{r.cell.key}: {r.error or r.status}'
                          for r in result.failed[:3]), file=sys.stderr)
        return 1
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..experiments.plots import MissingDependency, find_runs, plot_runs
    metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
    runs = find_runs(args.runs)
    labels = [x.strip() for x in args.labels.split(',')] if args.labels else None
    if labels is not None and len(labels) != len(runs):
        raise CommandError(f'--labels: {len(labels)} names for {len(runs)} runs', 2)
    if args.output:
        out = Path(args.output)
    elif len(runs) == 1:
        out = runs[0] / 'curves.png'
    else:
        out = Path('curves.png')
    try:
        path = plot_runs(runs, out, metrics=metrics, log_loss=args.log_loss,
                         labels=labels)
    except MissingDependency as e:
        raise CommandError(str(e), 1) from None
    print(f'{len(runs)} run(s): {path}')
    return 0
