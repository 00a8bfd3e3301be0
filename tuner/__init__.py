"""greentune: find the Triton serving config with the most inferences per joule under your constraints."""

from tuner.errors import BadInput, GreentuneError, NoFeasibleConfig
from tuner.results import Measurement, Spread, TrialConfig, TrialResult

__all__ = ["BadInput", "GreentuneError", "Measurement", "NoFeasibleConfig", "Spread", "TrialConfig", "TrialResult"]
