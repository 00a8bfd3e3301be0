"""Triton's Prometheus metrics: the model's inference count, to cross-check what a load engine counted."""

from __future__ import annotations

import re
import urllib.request

_COUNT = re.compile(r'^nv_inference_count\{([^}]*)\} ([0-9.eE+-]+)$', re.MULTILINE)


def inference_count(metrics_url: str | None, model: str, timeout_s: float = 2.0) -> float | None:
    """Successful inferences of `model` so far (all versions), from nv_inference_count; None where unreadable."""
    if not metrics_url:
        return None
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as resp:
            text = resp.read().decode(errors="replace")
    except OSError:
        return None
    return parse_inference_count(text, model)


def parse_inference_count(text: str, model: str) -> float | None:
    """Sum of nv_inference_count samples labelled model="<model>" in a metrics page; None if there are none."""
    label = f'model="{model}"'
    values = [float(value) for labels, value in _COUNT.findall(text) if label in labels.split(",")]
    return sum(values) if values else None
