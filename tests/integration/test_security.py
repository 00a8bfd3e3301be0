"""Servers greentune starts refuse Triton's model-repository (load with file overrides), shared-memory, logging and
trace APIs without the run's key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from multiprocessing import shared_memory

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import MODEL_REPOSITORY
from tuner.model_config import load_model_config
from tuner.server import control
from tuner.server.control import GRPC_HEADER_PREFIX
from tuner.server.local import CONTROL_HEADER

pytestmark = pytest.mark.integration


def _http_load(server, headers: dict[str, str]) -> int:
    return _http_status(server, "/v2/repository/models/mlp/load", headers, b"{}")


def _http_status(server, path: str, headers: dict[str, str], body: bytes | None = None) -> int:
    request = urllib.request.Request(f"{server.http_url}{path}", data=body, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_model_repository_api_needs_the_per_run_key_and_inference_does_not(server):
    assert set(server.control_headers) == {CONTROL_HEADER} and len(server.control_headers[CONTROL_HEADER]) >= 24
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        # another local user, without the key: load (with a file override) and unload are refused on both endpoints
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("mlp", config=json.dumps({"backend": "python"}),
                              files={"file:1/model.py": b"import os\nos.system('id > /tmp/pwned')\n"})
        assert "restricted" in refused.value.message().lower() or "unavail" in str(refused.value).lower()
        with pytest.raises(InferenceServerException):
            client.unload_model("mlp")
        with pytest.raises(InferenceServerException):
            client.load_model("mlp", headers={CONTROL_HEADER: "wrong-key"})
        assert _http_load(server, {}) >= 400
        assert _http_load(server, {CONTROL_HEADER: "wrong-key"}) >= 400
        assert _http_load(server, server.control_headers) == 200  # the flag syntax Triton 2.51 takes, on HTTP too
        # greentune itself (tuner/server/control.py sends the key) loads; inference needs no key
        load_and_infer(server, client)
    finally:
        client.close()
    log = server.log_path.read_text(errors="replace") if server.log_path else ""
    assert server.control_headers[CONTROL_HEADER] not in log


def _refused(call) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call()
    return refused.value.message().lower()


def test_shared_memory_logging_and_trace_need_the_key_and_model_control_still_works(server):
    # Another local user's client, without the key, must not make the server map a /dev/shm object greentune's user
    # can open, nor change its log or trace settings; greentune uses none of these APIs.
    region = shared_memory.SharedMemory(create=True, size=64)
    shm_key = f"/{region.name}"
    grpc_key = {GRPC_HEADER_PREFIX + k: v for k, v in server.control_headers.items()}
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert "restricted" in _refused(lambda: client.register_system_shared_memory("h21b", shm_key, 64))
        _refused(lambda: client.register_system_shared_memory(
            "h21b", shm_key, 64, headers={GRPC_HEADER_PREFIX + CONTROL_HEADER: "wrong-key"}))
        _refused(lambda: client.get_system_shared_memory_status())
        _refused(lambda: client.unregister_system_shared_memory())
        _refused(lambda: client.get_log_settings())
        _refused(lambda: client.get_trace_settings())
        body = json.dumps({"key": shm_key, "offset": 0, "byte_size": 64}).encode()
        assert _http_status(server, "/v2/systemsharedmemory/region/h21b/register", {}, body) >= 400
        assert _http_status(server, "/v2/systemsharedmemory/status", {}) >= 400
        assert _http_status(server, "/v2/logging", {}) >= 400
        assert _http_status(server, "/v2/trace/setting", {}) >= 400
        # with the key the same calls are answered: the flags restrict these APIs, they do not break them
        assert _http_status(server, "/v2/logging", server.control_headers) == 200
        assert _http_status(server, "/v2/trace/setting", server.control_headers) == 200
        client.get_log_settings(headers=grpc_key)
        client.register_system_shared_memory("h21b", shm_key, 64, headers=grpc_key)
        status = client.get_system_shared_memory_status(headers=grpc_key, as_json=True)
        assert "h21b" in json.dumps(status)
        client.unregister_system_shared_memory("h21b", headers=grpc_key)
        # greentune's own model control (tuner/server/control.py sends the key) still loads; inference needs no key
        load_and_infer(server, client)
    finally:
        client.close()
        region.close()
        region.unlink()


def load_and_infer(server, client) -> None:
    """greentune's model control loads mlp (it sends the key); one inference, which needs no key, is answered."""
    control.load_config(server, "mlp", load_model_config(MODEL_REPOSITORY, "mlp"))
    assert client.is_model_ready("mlp")
    spec = client.get_model_metadata("mlp", as_json=True)["inputs"][0]
    shape = [1 if int(d) == -1 else int(d) for d in spec["shape"]]
    tensor = grpcclient.InferInput(spec["name"], shape, spec["datatype"])
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    assert client.infer("mlp", [tensor]) is not None
