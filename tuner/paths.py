"""The output folder's layout: every file greentune writes or reads back is named here (the launchers name
their own server log and pid file)."""

from __future__ import annotations

from pathlib import Path

from tuner.errors import BadInput

SUMMARY = "summary.json"
TRIALS_CSV = "trials.csv"
TRIALS_DIR = "trials"
STUDY_DB = "study.db"
MEASUREMENT = "measurement.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
PARETO_PNG = "pareto.png"
EXPORT_SERVER_DIR = "export-server"
MODEL_CONFIG = "config.pbtxt"
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"


def summary_path(output: Path) -> Path:
    """OUTPUT/summary.json: the search's versioned summary."""
    return Path(output) / SUMMARY


def trials_csv_path(output: Path) -> Path:
    """OUTPUT/trials.csv: one row per measured config."""
    return Path(output) / TRIALS_CSV


def trial_record_path(output: Path, number: int) -> Path:
    """OUTPUT/trials/trial-NNNN.json: the raw record of one trial."""
    return Path(output) / TRIALS_DIR / f"trial-{number:04d}.json"


def trial_record_paths(output: Path) -> list[Path]:
    """Every trial record in OUTPUT, in trial order."""
    return sorted((Path(output) / TRIALS_DIR).glob("trial-*.json"))


def trial_number_of(record: Path) -> int:
    """The trial number a record's file name carries."""
    return int(record.stem.split("-")[1])


def study_path(output: Path) -> Path:
    """OUTPUT/study.db: the default study's SQLite file."""
    return Path(output) / STUDY_DB


def study_url(output: Path) -> str:
    """The default Optuna storage: sqlite:///OUTPUT/study.db."""
    return f"sqlite:///{study_path(output).resolve()}"


def measurement_path(output: Path) -> Path:
    """OUTPUT/measurement.json of `greentune measure`."""
    return Path(output) / MEASUREMENT


def model_folder_name(name: object, where: str = "model") -> str:
    """`name` when it is one folder name, as a model in a repository and OUTPUT/<model> must be; else BadInput."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise BadInput(f"{where}: {name!r} is not a model name: expected one folder name (no '/', no '..', "
                       "not empty, not an absolute path)")
    return name


def exported_config_path(output: Path, model: str, trial: int | None = None) -> Path:
    """OUTPUT/<model>/config.pbtxt for the chosen config, or OUTPUT/<model>/trial-N/config.pbtxt for trial N."""
    folder = Path(output) / model_folder_name(model)
    return (folder if trial is None else folder / f"trial-{trial}") / MODEL_CONFIG


def export_server_dir(output: Path) -> Path:
    """Where `greentune export --verify` keeps its server's log."""
    return Path(output) / EXPORT_SERVER_DIR


def report_paths(output: Path) -> tuple[Path, Path, Path]:
    """report.html, report.md and pareto.png in OUTPUT."""
    folder = Path(output)
    return folder / REPORT_HTML, folder / REPORT_MD, folder / PARETO_PNG


def compare_json_path(output: Path) -> Path:
    """OUTPUT/compare.json: greentune compare's versioned result for machines."""
    return Path(output) / COMPARE_JSON


def compare_md_path(output: Path) -> Path:
    """OUTPUT/compare.md: greentune compare's verdict and table for a pull request."""
    return Path(output) / COMPARE_MD
