"""examples/kubernetes: the manifests parse and carry the essentials (no cluster here, so no apply)."""

from __future__ import annotations

from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"


def test_worker_job_is_an_indexed_job_of_one_gpu_workers_with_the_storage_from_a_secret():
    (job,) = list(yaml.safe_load_all((EXAMPLE / "worker-job.yaml").read_text()))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] >= 2 and spec["parallelism"] >= 2
    (container,) = spec["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    command = " ".join(container["command"] + container["args"])
    assert "greentune worker" in command and "--study" in command
    assert "--storage" not in command  # greentune reads GREENTUNE_STORAGE itself: no URL in argv, which ps shows
    env = {e["name"]: e for e in container["env"]}
    assert env["GREENTUNE_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": "greentune-storage", "key": "url"}
    assert "tritonserver" in container["image"]


def test_no_password_in_any_manifest():
    for path in EXAMPLE.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            text = yaml.safe_dump(doc)
            assert "postgresql://" not in text, path
            for container in _containers(doc):
                for env in container.get("env", []):
                    if "PASSWORD" in env["name"] or "STORAGE" in env["name"]:
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"], (path, env["name"])


def test_readme_gives_the_commands():
    readme = (EXAMPLE / "README.md").read_text()
    for needed in ("kubectl create secret generic greentune-storage", "kubectl apply -f examples/kubernetes/worker-job.yaml",
                   'export GREENTUNE_STORAGE="postgresql://', "greentune report --study"):
        assert needed in readme


def _containers(doc):
    spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])
