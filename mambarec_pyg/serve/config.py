"""The options of the recommendation service (``mambarec serve``), as a typed
dataclass: each field's ``#:`` comment is its command-line help
(:func:`add_arguments` makes the flags of ``mambarec serve`` and ``python -m
mambarec_pyg.serve`` from it)."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass

from ..config import (ConfigError, check_choice, check_positive_int, describe_type,
                      field_docs, parse_text)

__all__ = ['ServeConfig', 'INDEX_KINDS', 'add_arguments', 'from_arguments']

#: The top-k indexes: exact blocked inner products, or faiss (flat: exact; hnsw:
#: approximate, for large catalogs).
INDEX_KINDS = ('exact', 'faiss-flat', 'faiss-hnsw')


@dataclass
class ServeConfig:
    """How ``mambarec serve`` answers requests."""

    #: address to listen on (0.0.0.0 for every interface, e.g. in a container).
    host: str = '127.0.0.1'
    #: TCP port to listen on.
    port: int = 8000
    #: top-k index: exact (blocked inner products), faiss-flat (exact, faiss) or
    #: faiss-hnsw (approximate, for large catalogs; needs faiss-cpu).
    index: str = 'exact'
    #: largest k a request may ask for.
    max_k: int = 1000
    #: most users in one POST /recommend request.
    max_batch: int = 1000
    #: largest request body in bytes.
    max_body_bytes: int = 1 << 20
    #: scores computed at a time by the exact index (bounds a request's memory).
    block_elements: int = 1 << 22
    #: faiss-hnsw: neighbours per node of the graph.
    hnsw_m: int = 32
    #: faiss-hnsw: candidate list length while building the graph.
    hnsw_ef_construction: int = 200
    #: faiss-hnsw: candidate list length of a search (at least k plus the user's
    #: excluded items).
    hnsw_ef_search: int = 128
    #: answer POST /reload (false: reload by SIGHUP only, e.g. when clients can
    #: reach the port).
    reload_endpoint: bool = True
    #: log one line per request (uvicorn's access log).
    access_log: bool = False
    #: uvicorn's log level: critical, error, warning, info, debug.
    log_level: str = 'info'

    def __post_init__(self) -> None:
        check_choice('index', self.index, INDEX_KINDS)
        check_choice('log_level', self.log_level,
                     ('critical', 'error', 'warning', 'info', 'debug', 'trace'))
        if not isinstance(self.port, int) or isinstance(self.port, bool) or \
                not 0 <= self.port <= 65535:
            raise ConfigError(f'port: expected an integer in [0, 65535], got '
                              f'{self.port!r}')
        for name in ('max_k', 'max_batch', 'max_body_bytes', 'block_elements',
                     'hnsw_m', 'hnsw_ef_construction', 'hnsw_ef_search'):
            check_positive_int(name, getattr(self, name))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional export directory and one ``--field-name`` flag per field of
    :class:`ServeConfig` (help from its ``#:`` comment)."""
    parser.add_argument('export_dir', metavar='DIR', help='export directory '
                        '(mambarec export --output DIR)')
    docs = field_docs(ServeConfig)
    hints = typing.get_type_hints(ServeConfig)
    for f in dataclasses.fields(ServeConfig):
        tp = hints[f.name]

        def convert(text: str, tp=tp):
            try:
                return parse_text(text, tp)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None

        convert.__name__ = describe_type(tp)
        metavar = {bool: 'BOOL', int: 'N'}.get(tp, f.name.upper().split('_')[-1])
        parser.add_argument(f'--{f.name.replace("_", "-")}', dest=f'serve:{f.name}',
                            type=convert, default=f.default, metavar=metavar,
                            help=(docs.get(f.name, '') + f' [default: {f.default}]')
                            .replace('%', '%%'))


def from_arguments(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` of parsed :func:`add_arguments` flags
    (:class:`~mambarec_pyg.config.ConfigError` for a bad value)."""
    return ServeConfig(**{key[len('serve:'):]: value for key, value in
                          vars(args).items() if key.startswith('serve:')})
