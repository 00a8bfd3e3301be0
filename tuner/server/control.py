"""Model control on a running server: load a config override, read metadata, smoke-test; Triton errors translated.

Every model-repository call (load) goes through here and sends the server's per-run control key
(Server.control_headers): servers greentune starts refuse that API to anyone without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tuner.errors import ModelLoadError, ServerDied, ServerError
from tuner.inputs import Sample
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


def unload(server: Server, model: str) -> None:
    """Unload the model (with the per-run control key), ignoring a model that is not loaded."""
    client = _client(server)
    try:
        client.unload_model(model, headers=_control_headers(server))
    except InferenceServerException:
        pass
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


def smoke_infer(server: Server, model: str, sample: Sample) -> None:
    """One inference with the given inputs; ServerError with Triton's message when it fails."""
    client = _client(server)
    try:
        client.infer(model, _infer_inputs(sample), client_timeout=60)
    except InferenceServerException as exc:
        raise ServerError(f"smoke inference on {model} failed: {exc.message()}") from None
    finally:
        client.close()


def _infer_inputs(sample: Sample) -> list[grpcclient.InferInput]:
    """One request's tensors, with Triton's datatype of each array."""
    inputs = []
    for name, array in sample.items():
        dtype = "BYTES" if array.dtype == np.object_ else str(np_to_triton_dtype(array.dtype))
        item = grpcclient.InferInput(name, list(array.shape), dtype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def backend_stub_pids(server: Server, model: str) -> set[int]:
    """Pids of the model's Python-backend stubs (one per instance, named MODEL_GROUP_INDEX); empty where not visible."""
    import re

    import psutil

    probe = server.probe
    if probe is None or not getattr(probe, "pids_visible", False) or server.pid is None:
        return set()
    instance = re.compile(rf"{re.escape(model)}_\d+_\d+")
    found = set()
    for pid in set(probe.pids()) - {server.pid}:
        try:
            args = psutil.Process(pid).cmdline()
        except psutil.Error:
            continue
        if any(instance.fullmatch(arg) for arg in args[-3:]):
            found.add(pid)
    return found


def wait_for_previous_instances(server: Server, model: str, previous: set[int], timeout_s: float = 30.0) -> set[int]:
    """After a load: wait until the previous config's stubs of the model have exited; returns those still alive.

    Returns at once when the load started no new stubs (Triton kept the instances of an unchanged config).
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        alive = {pid for pid in previous if _running(pid)}
        if not alive or backend_stub_pids(server, model) <= previous or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
