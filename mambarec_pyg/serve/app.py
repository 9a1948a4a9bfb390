"""The HTTP service: a FastAPI app over a :class:`~mambarec_pyg.serve.service.Service`.

Endpoints (every answer and every error is JSON):

==========================  ==========================================================
``GET /recommend``          ``?user=ID&k=20&exclude_seen=true``: one user's top-k
``POST /recommend``         ``{"users": [ID, ...], "k": 20, "exclude_seen": true}``
``GET /similar``            ``?item=ID&k=20``: items by cosine of item embeddings
                            (a ``sparse_dot`` export: by the item-item weights)
``GET /health``             status, export id, model, sizes, uptime
``GET /metadata``           the export's manifest and the serving options
``POST /reload``            load the export the directory names now (also SIGHUP;
                            ``--reload-endpoint false`` leaves SIGHUP only)
==========================  ==========================================================

Errors answer ``{"error": {"field": ..., "message": ..., "status": ...}}``: 400 for a
malformed body, 404 for an unknown item or path, 405 for a wrong method, 413 for a
body over the limit, 422 for a bad value; a failure inside the service answers 500
with a message and no traceback (which goes to the server log).

:func:`create_app` builds the app (for ``uvicorn --factory
mambarec_pyg.serve.app:create_app`` the directory comes from the environment variable
``MAMBAREC_EXPORT_DIR``); :func:`run_server` is ``mambarec serve``.
"""
# No ``from __future__ import annotations`` here: FastAPI reads the handlers'
# annotations (``request: Request``, imported inside create_app) as objects.
import contextlib
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional, Union

from .config import ServeConfig
from .export import ExportError
from .service import RequestError, Service

__all__ = ['create_app', 'run_server', 'install_sighup', 'EXPORT_DIR_ENV']

logger = logging.getLogger('mambarec_pyg.serve')

#: The export directory of :func:`create_app` when none is given.
EXPORT_DIR_ENV = 'MAMBAREC_EXPORT_DIR'
_EXTRA = "pip install 'mambarec-pyg[serve]'"


def _require(module: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f'the recommendation service needs {module.split(".")[0]} '
                          f'(fastapi and uvicorn): {_EXTRA}') from None


def create_app(directory: Union[str, Path, None] = None,
               config: Optional[ServeConfig] = None, *,
               service: Optional[Service] = None, sighup: bool = True):
    """The FastAPI app serving the export ``directory`` (default:
    ``$MAMBAREC_EXPORT_DIR``), or an existing ``service``.

    ``sighup`` reloads on SIGHUP, installed when the app starts in the main thread
    (a server process; not under a test client).
    """
    fastapi = _require('fastapi')
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    if service is None:
        directory = directory or os.environ.get(EXPORT_DIR_ENV)
        if not directory:
            raise ValueError(f'create_app: no export directory (pass one or set '
                             f'${EXPORT_DIR_ENV})')
        service = Service(directory, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if sighup:
            install_sighup(service)
        yield

    from .. import __version__
    # no /docs or /openapi.json: the parameters are read by hand (see the README)
    app = fastapi.FastAPI(title='mambarec_pyg recommendations', version=__version__,
                          lifespan=lifespan, docs_url=None, redoc_url=None,
                          openapi_url=None)
    app.state.service = service

    def answer(obj: Any, status: int = 200) -> Response:
        return Response(json.dumps(obj, allow_nan=False), status_code=status,
                        media_type='application/json')

    def error(status: int, field: Optional[str], message: str, headers=None):
        return Response(json.dumps({'error': {'field': field, 'message': message,
                                              'status': status}}),
                        status_code=status, media_type='application/json',
                        headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return error(exc.status, exc.field, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        message = {404: f'no such endpoint {request.url.path!r} (see GET /metadata '
                        f'and the README)',
                   405: f'method {request.method} is not allowed on '
                        f'{request.url.path!r}'}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, None, message, getattr(exc, 'headers', None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        loc = [str(p) for p in first.get('loc', ()) if p not in ('query', 'body')]
        return error(422, '.'.join(loc) or None, str(first.get('msg', 'invalid')))

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        logger.error('%s %s failed', request.method, request.url.path, exc_info=exc)
        return error(500, None, f'internal error ({type(exc).__name__}); see the '
                                f'server log')

    @app.get('/health')
    def health():
        return answer(service.health())

    @app.get('/metadata')
    def metadata():
        return answer(service.metadata())

    @app.get('/recommend')
    def recommend(request: Request):
        return answer(service.recommend_query(request.query_params.multi_items()))

    @app.post('/recommend')
    async def recommend_batch(request: Request):
        body = await _read_body(request, service.config.max_body_bytes)
        return answer(await run_in_threadpool(service.recommend_batch, body))

    @app.get('/similar')
    def similar(request: Request):
        return answer(service.similar_query(request.query_params.multi_items()))

    def reload(request: Request):
        if request.query_params:
            key = next(iter(request.query_params))
            raise RequestError(422, key, 'unknown query parameter (reload takes none)')
        try:
            return answer(service.reload())
        except (ExportError, ImportError, OSError, ValueError) as e:
            logger.error('reload failed: %s; still serving export %s', e,
                         service.snapshot.id)
            return error(500, None, f'reload failed: {e}; still serving export '
                                    f'{service.snapshot.id}')

    if service.config.reload_endpoint:
        app.post('/reload')(reload)
    return app


async def _read_body(request, limit: int) -> bytes:
    length = request.headers.get('content-length')
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, 'body', f'bad Content-Length {length!r}')
        if int(length) > limit:
            raise RequestError(413, 'body', f'at most {limit} bytes, got {length}')
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(413, 'body', f'at most {limit} bytes')
        chunks.append(chunk)
    return b''.join(chunks)


def _reload_logged(service: Service) -> None:
    try:
        result = service.reload()
        if not result['reloaded']:
            logger.info('SIGHUP: export %s is already served', result['export'])
    except Exception as e:  # noqa: BLE001 - a failed reload keeps the old export
        logger.error('SIGHUP reload failed: %s; still serving export %s', e,
                     service.snapshot.id)


def install_sighup(service: Service) -> bool:
    """Reload ``service`` (in a new thread) on SIGHUP; ``False`` where signals cannot
    be installed (no SIGHUP on this platform, or not the main thread)."""
    if not hasattr(signal, 'SIGHUP') or \
            threading.current_thread() is not threading.main_thread():
        return False

    def handler(signum, frame):
        threading.Thread(target=_reload_logged, args=(service, ),
                         name='mambarec-reload', daemon=True).start()

    signal.signal(signal.SIGHUP, handler)
    return True


def run_server(directory: Union[str, Path], config: Optional[ServeConfig] = None
               ) -> None:
    """Serve the export ``directory`` with uvicorn until SIGINT or SIGTERM (what
    ``mambarec serve`` runs). The export is loaded before the port is opened, so a
    bad export stops here with its error."""
    uvicorn = _require('uvicorn')
    config = config or ServeConfig()
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter('%(levelname)s:     %(message)s'))
        logger.addHandler(handler)
        logger.setLevel(config.log_level.upper() if config.log_level != 'trace'
                        else 'DEBUG')
        logger.propagate = False
    service = Service(directory, config)
    app = create_app(service=service)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                access_log=config.access_log)
