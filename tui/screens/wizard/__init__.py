"""The wizard: one screen per step - scan, tier, setup (with a live fit meter), review, launch - one module
each. The steps share one WizardState; Escape goes back a step without losing anything typed. Everything
heavy (torch, transformers) stays out of this process: scan, tiers, planner, run-file checks and the dataset
preview are plain Python from engine/."""
from __future__ import annotations

from .launch import LaunchStep
from .review import ReviewStep
from .scan import ScanStep
from .setup import SetupStep
from .state import DEMO, Step, WizardState, initial_values, tier_order
from .tier import TierStep

__all__ = ["DEMO", "LaunchStep", "ReviewStep", "ScanStep", "SetupStep", "Step", "TierStep", "WizardState",
           "initial_values", "tier_order"]
