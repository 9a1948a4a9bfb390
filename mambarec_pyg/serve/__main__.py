"""``python -m mambarec_pyg.serve DIR [options]``: ``mambarec serve`` on its own.

The same options and behaviour as ``mambarec serve``; the full command line (all
commands and every model's options) is not built, so torch is never imported: the
server starts faster and holds less memory. Use it in containers and process
managers.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..config import ConfigError
from .config import add_arguments, from_arguments


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m mambarec_pyg.serve', allow_abbrev=False,
        description='Serve an export (mambarec export) over HTTP; see mambarec serve '
                    "--help. Needs the serve extra: pip install 'mambarec-pyg[serve]'.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = from_arguments(args)
    except ConfigError as e:
        parser.error(str(e))
    from .export import ExportError
    try:
        from .app import run_server
        run_server(args.export_dir, config)
    except (ExportError, ImportError) as e:
        print(f'mambarec serve: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
