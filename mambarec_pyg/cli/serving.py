"""``mambarec export`` and ``serve``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import CommandError, _checkpoint_path, _load


def cmd_export(args: argparse.Namespace) -> int:
    from ..serve.export import ExportError, check_target, checkpoint_info, export_model
    from ..train.checkpoint import load_checkpoint
    if args.keep < 1:
        raise CommandError(f'--keep: expected a positive integer, got {args.keep}', 2)
    try:  # before the model is loaded: refuse early
        check_target(args.output, args.overwrite)
    except FileExistsError as e:
        raise CommandError(f'{e}'.replace('pass overwrite=True (--overwrite)',
                                          'use --overwrite'), 1) from None
    except ExportError as e:
        raise CommandError(str(e), 1) from None
    model, data, config = _load(args)
    path = _checkpoint_path(args.checkpoint)
    state = load_checkpoint(path, trusted=bool(args.trust_checkpoint))
    state.pop('model', None)
    spec = dict(state.get('data') or config.to_dict()['data'])
    if args.short_root:
        spec['root'] = str(Path(args.short_root).resolve())
    try:
        out = export_model(model, data, args.output, config=config,
                           checkpoint=checkpoint_info(path, state), data_spec=spec,
                           id_maps=None if args.no_id_maps else 'auto',
                           overwrite=args.overwrite, keep=args.keep)
    except FileExistsError as e:
        raise CommandError(f'{e}'.replace('pass overwrite=True (--overwrite)',
                                          'use --overwrite'), 1) from None
    except ExportError as e:
        raise CommandError(str(e), 1) from None
    print(f'exported {type(model).name} ({model.num_users} users, {model.num_items} '
          f'items) to {out}; serve with: mambarec serve {args.output}')
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.config import from_arguments
    from ..serve.export import ExportError
    config = from_arguments(args)
    try:
        from ..serve.app import run_server
        run_server(args.export_dir, config)
    except (ExportError, ImportError) as e:
        raise CommandError(str(e), 1) from None
    return 0
