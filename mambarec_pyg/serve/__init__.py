"""Serving: export a trained model, then answer recommendation requests over HTTP.

* :mod:`~mambarec_pyg.serve.export` -- :func:`export_model` writes the final
  embeddings (or, for content-based item kNN, the item-item weights: score function
  ``sparse_dot``), each user's training items, item popularity, external id maps and
  a manifest, published atomically; :func:`load_export` reads one back;
* :mod:`~mambarec_pyg.serve.index` -- exact blocked top-k by inner product, or faiss
  (flat or HNSW); exact sparse sums for ``sparse_dot``;
* :mod:`~mambarec_pyg.serve.service` -- requests to answers over an immutable
  snapshot, with atomic reload;
* :mod:`~mambarec_pyg.serve.app` -- the FastAPI app and ``mambarec serve`` (extra
  ``serve``: fastapi, uvicorn, httpx, faiss-cpu);
* :mod:`~mambarec_pyg.serve.loadgen` -- a local server process and concurrent
  clients, for the tests and ``benchmarks/serve.py``.

Names are imported on first use: the export and the index need numpy only.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'export_model': 'mambarec_pyg.serve.export',
    'write_export': 'mambarec_pyg.serve.export',
    'load_export': 'mambarec_pyg.serve.export',
    'Export': 'mambarec_pyg.serve.export',
    'ExportError': 'mambarec_pyg.serve.export',
    'ExactIndex': 'mambarec_pyg.serve.index',
    'SparseDotIndex': 'mambarec_pyg.serve.index',
    'FaissIndex': 'mambarec_pyg.serve.index',
    'Service': 'mambarec_pyg.serve.service',
    'RequestError': 'mambarec_pyg.serve.service',
    'ServeConfig': 'mambarec_pyg.serve.config',
    'create_app': 'mambarec_pyg.serve.app',
    'run_server': 'mambarec_pyg.serve.app',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
