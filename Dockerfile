# greentune itself, to run against a Docker Engine on the host (docker launcher) or a remote Triton.
#   docker build -t greentune .
#   docker run --rm --network host -v /var/run/docker.sock:/var/run/docker.sock \
#     -v "$PWD/model_repository:$PWD/model_repository:ro" -v "$PWD/out:/out" greentune \
#     search --launcher docker --model-repository "$PWD/model_repository" --model mlp --output /out
# The model repository is mounted at the same path as on the host, because the Triton container that
# greentune starts through the host's Docker mounts it by that (host) path.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A normal (non-editable) install, as from a package index: the source is built into a wheel and removed.
WORKDIR /tmp/greentune-src
COPY pyproject.toml setup.py README.md ./
COPY tuner ./tuner
COPY search_spaces ./search_spaces
RUN pip install --no-cache-dir . \
    && rm -rf /tmp/greentune-src \
    && useradd --create-home --uid 1000 greentune
# The example model, for a first try: search -r /opt/greentune/model_repository -m mlp
COPY model_repository /opt/greentune/model_repository

# The entrypoint works from any directory; nothing is read from a source tree.
WORKDIR /
# Root is kept as the default user so the mounted Docker socket is usable; pass --user 1000 when the
# socket's group allows it.
ENTRYPOINT ["greentune"]
CMD ["--help"]
