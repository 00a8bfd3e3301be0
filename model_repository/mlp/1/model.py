"""A small numpy MLP served by Triton's Python backend: its cost really depends on batching and instances."""

import json
import os

# One BLAS thread per model instance, so instance_count (not BLAS) decides how many cores serve.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

HIDDEN_WIDTH = 1024
LAYER_COUNT = 3


class TritonPythonModel:
    """Deterministic weights made at load time; nothing is downloaded."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        inp = config["input"][0]
        out = config["output"][0]
        self.input_name = inp["name"]
        self.output_name = out["name"]
        in_width = int(inp["dims"][-1])
        out_width = int(out["dims"][-1])
        self.batches = int(config.get("max_batch_size", 0)) > 0
        widths = [in_width] + [HIDDEN_WIDTH] * LAYER_COUNT + [out_width]
        rng = np.random.default_rng(0)
        self.weights = [
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
            for a, b in zip(widths, widths[1:], strict=False)
        ]

    def _forward(self, x):
        for w in self.weights[:-1]:
            x = np.maximum(x @ w, 0.0)
        return x @ self.weights[-1]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        flat = [a.reshape(-1, a.shape[-1]) for a in arrays]
        y = self._forward(np.concatenate(flat).astype(np.float32))
        responses, start = [], 0
        for a, f in zip(arrays, flat, strict=True):
            part = y[start : start + f.shape[0]].reshape(a.shape[:-1] + (y.shape[-1],))
            start += f.shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]))
        return responses
