"""The ``mambarec`` command: train, evaluate, recommend, search, models, stats,
prepare, export, serve.

::

    mambarec models
    mambarec train --synthetic tiny --output runs/tiny
    mambarec train --synthetic tiny --model.name lightgcn --output runs/lightgcn
    mambarec train --data data --dataset baby --model.mmd-weight 0.15 --output runs/baby
    mambarec train --config run.yaml --train.max-epochs 50 --resume --output runs/x
    mambarec evaluate runs/baby/best.pt --split test
    mambarec recommend runs/baby/best.pt --users 0,1,2 --k 20 --format json
    mambarec export runs/baby/best.pt --output exports/baby
    mambarec serve exports/baby --host 127.0.0.1 --port 8000
    mambarec stats --data data --dataset baby
    mambarec search --synthetic baby --output runs/grid
    mambarec search --synthetic baby --output runs/grid --workers 4 --sampler optuna
    mambarec experiment table2 --data data --output runs/table2 --workers 8
    mambarec prepare --ratings ratings_Baby.csv --meta meta_Baby.json.gz \\
                     --images image_features_Baby.b --dataset baby

Every field of :class:`~mambarec_pyg.config.Config` is a flag named
``--<section>.<field>`` with dashes (``--model.mmd-weight 0.2``,
``--train.max-epochs 50``, ``--data.modalities image,text``); underscores are accepted
too. ``--model.name NAME`` picks the model (default ``mambarec``); the ``--model.*``
flags are those of the chosen model (``mambarec train --model.name lightgcn --help``
lists them). Values: numbers, ``true``/``false``, ``none`` for an empty optional, and
comma-separated lists for tuples. Precedence: built-in defaults, then ``--config
FILE.yaml``, then flags. Short forms: ``--data ROOT``, ``--dataset NAME``,
``--synthetic PRESET``, ``--synthetic-seed S``, ``--device D``.

The package: :mod:`.parser` (the parser), :mod:`.flags` (config fields to flags, the
executor flags), :mod:`.common` (the config from a file and flags, checkpoints,
tables) and one module per command family: :mod:`.run` (train, evaluate, recommend,
models), :mod:`.data` (prepare, stats), :mod:`.serving` (export, serve),
:mod:`.search` and :mod:`.experiment` (experiment, plot). ``python -m
mambarec_pyg.cli`` is the same command (also under ``torchrun``).

Exit codes: 0 success, 1 a failure (missing file, bad data, diverged run), 2 a bad
command line or option value, 130 interrupted (Ctrl-C; the run can be resumed).
"""

import sys
from typing import List, Optional, Sequence

from ..config import ConfigError
from .common import (DEFAULT_MODEL, CommandError, _arg_type, _config, _default_name,
                     _model_name, _normalise, _os_error_message, _sections)
from .data import cmd_prepare, cmd_stats
from .experiment import cmd_experiment, cmd_plot
from .parser import build_parser
from .run import cmd_evaluate, cmd_models, cmd_recommend, cmd_train
from .search import cmd_search
from .serving import cmd_export, cmd_serve

__all__ = ['main', 'build_parser', 'CommandError', 'DEFAULT_MODEL']


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``mambarec`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith('-')), 'mambarec')
    try:
        return _main(_normalise(argv))
    except KeyboardInterrupt:  # also during start-up (imports, data loading)
        print(f'mambarec {command}: interrupted', file=sys.stderr)
        return 130


def _main(argv: List[str]) -> int:
    try:
        parser = build_parser(_model_name(argv))
    except ConfigError as e:  # an unknown --model.name
        print(f'mambarec: error: {e}', file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    from .. import errors  # the package's own error base (not a model's name)
    try:
        return args.func(args)
    except ConfigError as e:
        if not getattr(args, '_options_read', False):
            args._parser.print_usage(sys.stderr)
        print(f'mambarec {args.command}: error: {e}', file=sys.stderr)
        return 2
    except CommandError as e:
        if e.code == 2:
            args._parser.print_usage(sys.stderr)
        print(f'mambarec {args.command}: error: {e}', file=sys.stderr)
        return e.code
    except (errors.MambaRecError, FileNotFoundError, PermissionError, ValueError,
            OSError) as e:
        message = _os_error_message(e) if isinstance(e, OSError) else str(e)
        print(f'mambarec {args.command}: error: {message}', file=sys.stderr)
        return 1
