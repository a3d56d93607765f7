"""UPGP-book: backdoor detection by unlearning perturbation, removal by null-space projection."""

from .attacks import ATTACKS, create_attack
from .method import UPGPConfig, project_out, upgp_defend
from .models import MODELS, create_model
from .presets import PRESETS, Preset, get_preset
from .runs import DefenseRun, run_upgp
from .scenarios import Scenario, backdoored_model, build_scenario

__all__ = ["ATTACKS", "MODELS", "PRESETS", "DefenseRun", "Preset", "Scenario", "UPGPConfig",
           "backdoored_model", "build_scenario", "create_attack", "create_model", "get_preset",
           "project_out", "run_upgp", "upgp_defend"]
__version__ = "0.1.0"
