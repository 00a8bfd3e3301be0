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

WORKDIR /opt/greentune
COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY search_spaces ./search_spaces
COPY model_repository ./model_repository
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 1000 greentune

# Root is kept as the default user so the mounted Docker socket is usable; pass --user 1000 when the
# socket's group allows it.
ENTRYPOINT ["greentune"]
CMD ["--help"]
