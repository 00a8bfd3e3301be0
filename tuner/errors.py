"""Typed errors that every stage raises and the CLI maps to exit codes."""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INFEASIBLE = 3
EXIT_REGRESSION = 4  # greentune compare: the candidate costs more energy per inference than the threshold allows
EXIT_INCONCLUSIVE = 5  # greentune compare: the interval straddles the threshold (0 with --inconclusive pass)


class GreentuneError(Exception):
    """Base error: a one-line message meant for the user, and the exit code it maps to."""

    exit_code = EXIT_FAILURE


class BadInput(GreentuneError):
    """The user's input (a flag, a file, a field) is invalid; the message names it and what is valid."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        # One line by contract: a value the user typed may itself hold line breaks.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class ServerError(GreentuneError):
    """The Triton server failed to start, died, or refused an operation."""


class ServerStartError(ServerError):
    """The server did not become ready; the message carries its last log lines."""


class ServerDied(ServerError):
    """The server process exited while it was in use."""


class ModelLoadError(ServerError):
    """Triton refused to load a model config; the message is Triton's own."""


class LoadGenerationError(GreentuneError):
    """Requests failed beyond the allowed error rate, or the load could not be generated."""


class LoadToolError(LoadGenerationError):
    """The load tool itself failed (perf_analyzer crashed, stalled or wrote a damaged export, or could not send at the
    asked rate): a failure of the measurement, not a property of the config, so the trial is retried once and never
    taught to the sampler as a bad config."""


class MeterUnavailable(GreentuneError):
    """A meter cannot run on this machine; the message says why and how to fix it."""


class StorageError(GreentuneError):
    """A trial result could not be saved; the search stops rather than lose results."""


class NoFeasibleConfig(GreentuneError):
    """The search finished without any config that meets the constraints."""

    exit_code = EXIT_INFEASIBLE
