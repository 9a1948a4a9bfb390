# A minimal CPU image that serves one export (mambarec export) over HTTP.
#
#   docker build -t mambarec-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/exports/baby:/export:ro" mambarec-serve
#   curl 'localhost:8000/recommend?user=0&k=10'
#
# Publish a new version on the host (mambarec export ... --output exports/baby
# --overwrite), then reload without a restart: docker kill --signal HUP CONTAINER.
# Nothing is downloaded at run time, and the build fetches only Python packages.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=1

WORKDIR /opt/mambarec_pyg
# The CPU build of torch first, so that the package's torch requirement does not
# pull a multi-GB CUDA build (the server itself never imports torch).
RUN python -m pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY setup.cfg pyproject.toml README.md LICENSE ./
COPY mambarec_pyg ./mambarec_pyg
RUN python -m pip install '.[serve]'

USER nobody
EXPOSE 8000
# python -m mambarec_pyg.serve is `mambarec serve` without the other commands: it
# does not import torch, so it starts faster and holds less memory. Clients can reach
# the port, so POST /reload is off: reload with SIGHUP.
CMD ["python", "-m", "mambarec_pyg.serve", "/export", "--host", "0.0.0.0", "--port", "8000", \
     "--reload-endpoint", "false"]
