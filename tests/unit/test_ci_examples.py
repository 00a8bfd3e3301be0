"""examples/ci: the GitHub Actions workflow and the GitLab CI job parse, carry the essentials, and their shell steps,
run with a stand-in greentune, publish compare.md and end with greentune's own exit code."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tuner.errors import EXIT_BAD_INPUT, EXIT_INCONCLUSIVE, EXIT_REGRESSION

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ci"
# Stands in for greentune: records its arguments, writes compare.md/compare.json into -o unless told not to, exits
# with $FAKE_EXIT (what the examples must hand on).
FAKE_GREENTUNE = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$ARGS_LOG"
out=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "-o" ]; then out="$arg"; fi
  prev="$arg"
done
if [ -n "$out" ] && [ "$FAKE_WRITES" = "1" ]; then
  mkdir -p "$out"
  echo "**greentune compare: VERDICT $FAKE_EXIT** - from the stand-in" > "$out/compare.md"
  echo '{"schema_version": 1}' > "$out/compare.json"
fi
exit "$FAKE_EXIT"
"""


def _github() -> dict:
    return yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())


def _gitlab() -> dict:
    return yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())


def _github_job() -> dict:
    (job,) = _github()["jobs"].values()
    return job


def _step(uses: str | None = None, runs: str | None = None, step_id: str | None = None) -> dict:
    """The GitHub job's one step that uses an action, runs a command containing `runs`, or has an id."""
    found = [s for s in _github_job()["steps"]
             if (uses is not None and str(s.get("uses", "")).startswith(uses))
             or (runs is not None and runs in s.get("run", ""))
             or (step_id is not None and s.get("id") == step_id)]
    assert len(found) == 1, (uses, runs, step_id, found)
    return found[0]


def _compare_args(script: str) -> list[str]:
    """The arguments of the one `greentune compare` command in a script."""
    (line,) = [line for line in script.splitlines() if line.lstrip().startswith("greentune compare")]
    words = shlex.split(line.split("||")[0])
    return words[words.index("compare") + 1:]


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, (flag, args)
    return args[args.index(flag) + 1]


# GitHub Actions.

def test_github_runs_on_pull_requests_on_a_self_hosted_gpu_runner():
    workflow = _github()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 (PyYAML) reads the bare key `on` as True
    assert "pull_request" in triggers
    assert _github_job()["runs-on"] == ["self-hosted", "gpu"]
    assert workflow["env"]["MODEL"]


def test_github_checks_out_full_history_and_reads_the_base_branch_config():
    assert _step(uses="actions/checkout@")["with"]["fetch-depth"] == 0
    assert _step(uses="actions/setup-python@")["with"]["python-version"]
    show = _step(runs="git show")["run"]
    assert "origin/${{ github.base_ref }}:" in show and "config.pbtxt" in show and show.strip().endswith(
        "> baseline.pbtxt")


def test_github_caches_greentunes_cache_keyed_on_its_version_and_fetches_the_server():
    cache = _step(uses="actions/cache@")["with"]
    assert cache["path"] == "~/.cache/greentune"  # tuner/server/embedded.py cache_dir() without $GREENTUNE_CACHE
    assert "GREENTUNE_VERSION" in cache["key"]
    install = _step(runs="greentune doctor --fetch")["run"]
    assert "pip install" in install and "${GREENTUNE_VERSION}" in install


def test_github_compare_command_summary_artifact_and_exit_code():
    compare = _step(step_id="compare")["run"]
    args = _compare_args(compare)
    assert _flag(args, "--baseline") == "baseline.pbtxt"
    assert _flag(args, "--candidate") == "$MODEL_REPOSITORY/$MODEL/config.pbtxt"
    assert _flag(args, "-r") == "$MODEL_REPOSITORY" and _flag(args, "-m") == "$MODEL"
    out = _flag(args, "-o")
    assert f'cat {out}/compare.md >> "$GITHUB_STEP_SUMMARY"' in compare
    assert "|| code=$?" in compare and 'echo "exit_code=$code" >> "$GITHUB_OUTPUT"' in compare
    upload = _step(uses="actions/upload-artifact@")
    assert upload["if"] == "always()" and upload["with"]["path"].rstrip("/") == out
    steps = _github_job()["steps"]
    assert steps[-1]["run"].strip() == "exit ${{ steps.compare.outputs.exit_code }}"
    assert steps.index(upload) < len(steps) - 1


@pytest.mark.parametrize(("code", "writes"), [(0, True), (EXIT_REGRESSION, True), (EXIT_INCONCLUSIVE, True),
                                              (EXIT_BAD_INPUT, False)])
def test_github_steps_publish_the_summary_and_end_with_greentunes_code(tmp_path, code, writes):
    env = _fake_environment(tmp_path, code, writes, _github()["env"])
    env["GITHUB_OUTPUT"], env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "output"), str(tmp_path / "summary.md")
    compare = _bash(_step(step_id="compare")["run"], env, tmp_path)
    assert compare.returncode == 0, compare.stderr  # the step succeeds so that the summary and artifact follow
    assert (tmp_path / "output").read_text() == f"exit_code={code}\n"
    summary = (tmp_path / "summary.md").read_text()
    assert (f"VERDICT {code}" in summary) == writes and (writes or f"exited {code}" in summary)
    assert (tmp_path / "args").read_text().split()[:2] == ["compare", "-r"]
    gate = _github_job()["steps"][-1]["run"].replace("${{ steps.compare.outputs.exit_code }}", str(code))
    assert _bash(gate, env, tmp_path).returncode == code


# GitLab CI.

def test_gitlab_job_runs_on_merge_requests_on_a_gpu_runner_with_artifacts():
    pipeline = _gitlab()
    (name,) = [key for key, value in pipeline.items() if isinstance(value, dict) and "script" in value]
    job = pipeline[name]
    assert any(rule["if"].replace(" ", "") == '$CI_PIPELINE_SOURCE=="merge_request_event"' for rule in job["rules"])
    assert job["tags"] == ["gpu"]
    assert pipeline["variables"]["GREENTUNE_CACHE"] == "$CI_PROJECT_DIR/.cache/greentune"  # read by cache_dir()
    assert job["cache"]["paths"] == [".cache/greentune"] and "GREENTUNE_VERSION" in job["cache"]["key"]
    script = "\n".join(job["script"])
    assert "greentune doctor --fetch" in script
    assert 'git fetch origin "$CI_MERGE_REQUEST_TARGET_BRANCH_NAME"' in script
    assert 'git show "origin/${CI_MERGE_REQUEST_TARGET_BRANCH_NAME}:' in script
    args = _compare_args(script)
    assert _flag(args, "--baseline") == "baseline.pbtxt" and "config.pbtxt" in _flag(args, "--candidate")
    out = _flag(args, "-o")
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always" and artifacts["expose_as"]
    assert f"{out}/compare.json" in artifacts["paths"] and f"{out}/compare.md" in artifacts["paths"]


@pytest.mark.parametrize(("code", "writes"), [(0, True), (EXIT_REGRESSION, True), (EXIT_INCONCLUSIVE, True),
                                              (EXIT_BAD_INPUT, False)])
def test_gitlab_script_shows_compare_md_and_ends_with_greentunes_code(tmp_path, code, writes):
    pipeline = _gitlab()
    (job,) = [value for value in pipeline.values() if isinstance(value, dict) and "script" in value]
    lines = job["script"]
    start = next(i for i, line in enumerate(lines) if line.startswith("code="))
    env = _fake_environment(tmp_path, code, writes, {k: v for k, v in pipeline["variables"].items()
                                                      if k != "GREENTUNE_CACHE"})
    run = _bash("\n".join(lines[start:]), env, tmp_path)
    assert run.returncode == code, run.stderr
    assert (f"VERDICT {code}" in run.stdout) == writes


def test_readme_gives_the_exit_codes_and_inconclusive_pass():
    readme = (EXAMPLES / "README.md").read_text()
    for code, word in ((0, "pass"), (4, "regression"), (5, "inconclusive"), (2, "bad input"), (1, "other failure")):
        assert f"| {code} | {word}" in readme, code
    assert "--inconclusive pass" in readme
    assert "github-actions.yml" in readme and "gitlab-ci.yml" in readme


def _fake_environment(tmp_path: Path, code: int, writes: bool, variables: dict) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "greentune"
    fake.write_text(FAKE_GREENTUNE)
    fake.chmod(0o755)
    return {**os.environ, **{k: str(v) for k, v in variables.items()},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ARGS_LOG": str(tmp_path / "args"),
            "FAKE_EXIT": str(code), "FAKE_WRITES": "1" if writes else "0"}


def _bash(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a step as both CI systems do: bash with -e and -o pipefail."""
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=30, check=False)
