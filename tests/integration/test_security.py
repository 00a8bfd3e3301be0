"""Servers greentune starts refuse Triton's model-repository API (load with file overrides) without the run's key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import MODEL_REPOSITORY
from tuner.model_config import load_model_config
from tuner.server import control
from tuner.server.local import CONTROL_HEADER

pytestmark = pytest.mark.integration


def _http_load(server, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"{server.http_url}/v2/repository/models/mlp/load", data=b"{}", method="POST",
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
        control.load_config(server, "mlp", load_model_config(MODEL_REPOSITORY, "mlp"))
        assert client.is_model_ready("mlp")
        metadata = client.get_model_metadata("mlp", as_json=True)
        spec = metadata["inputs"][0]
        shape = [1 if int(d) == -1 else int(d) for d in spec["shape"]]
        tensor = grpcclient.InferInput(spec["name"], shape, spec["datatype"])
        tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
        assert client.infer("mlp", [tensor]) is not None
    finally:
        client.close()
    log = server.log_path.read_text(errors="replace") if server.log_path else ""
    assert server.control_headers[CONTROL_HEADER] not in log
