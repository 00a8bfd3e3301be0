"""Model control on a running server: load a config override, read metadata, smoke-test; Triton errors translated.

Every model-repository call (load) goes through here and sends the server's per-run control key
(Server.control_headers): servers greentune starts refuse that API to anyone without it.
"""

from __future__ import annotations

from typing import Any

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tuner.errors import ModelLoadError, ServerDied, ServerError
from tuner.model_config import ModelConfig, to_json
from tuner.server.base import Server

GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton 2.51 expects restricted-protocol keys with this prefix on gRPC


def _control_headers(server: Server) -> dict[str, str]:
    """The per-run key as gRPC metadata for the model-repository protocol."""
    return {GRPC_HEADER_PREFIX + key: value for key, value in server.control_headers.items()}


def _client(server: Server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def load_config(server: Server, model: str, config: ModelConfig, timeout_s: float = 300.0) -> None:
    """Load (or reload) the model with this config override; ModelLoadError carries Triton's message."""
    client = _client(server)
    try:
        client.load_model(model, config=to_json(config), client_timeout=timeout_s, headers=_control_headers(server))
    except InferenceServerException as exc:
        if not server.is_alive():
            raise ServerDied(f"tritonserver died while loading {model}; last log lines:\n{server.log_tail()}") from None
        raise ModelLoadError(f"Triton refused to load {model}: {exc.message()}") from None
    finally:
        client.close()


def model_metadata(server: Server, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The loaded model's metadata and config as dicts (inputs with dtype and shape, max_batch_size)."""
    client = _client(server)
    try:
        metadata = client.get_model_metadata(model, as_json=True)
        config = client.get_model_config(model, as_json=True)["config"]
    except InferenceServerException as exc:
        raise ServerError(f"cannot read metadata of {model}: {exc.message()}") from None
    finally:
        client.close()
    return metadata, config


def server_version(server: Server) -> str:
    """Triton's version string, or 'unknown'."""
    client = _client(server)
    try:
        return str(client.get_server_metadata(as_json=True).get("version", "unknown"))
    except InferenceServerException:
        return "unknown"
    finally:
        client.close()


def smoke_infer(server: Server, model: str, sample: dict[str, Any]) -> None:
    """One inference with the given inputs; ServerError with Triton's message when it fails."""
    from tuner.load import LoadGenerator

    client = _client(server)
    try:
        client.infer(model, LoadGenerator.make_inputs(sample), client_timeout=60)
    except InferenceServerException as exc:
        raise ServerError(f"smoke inference on {model} failed: {exc.message()}") from None
    finally:
        client.close()
