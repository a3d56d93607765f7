"""UPGP-book: backdoor detection by unlearning perturbation, removal by null-space projection."""

from .attacks import ATTACKS, create_attack
from .experiments import Scenario, backdoored_model, build_scenario
from .models import MODELS, create_model
from .presets import PRESETS, Preset, get_preset

__all__ = ["ATTACKS", "MODELS", "PRESETS", "Preset", "Scenario", "backdoored_model",
           "build_scenario", "create_attack", "create_model", "get_preset"]
__version__ = "0.1.0"
