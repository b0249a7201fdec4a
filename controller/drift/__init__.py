"""Drift of served models: reference profiles, live windows and their statistics (pure, numpy and scipy).

:mod:`.profile` turns the sample a train step wrote to ``FLYWHEEL_REFERENCE_DATA``
into a version's reference profile (the engine's judge calls it);
:mod:`.window` keeps each served version's live windows (the router calls
it); :mod:`.stats` compares a window with the profile. Nothing here talks to
the world beyond reading and writing the files it is given.
"""

from controller.drift.profile import (
    PREDICTION,
    PROFILE_FILE,
    Profile,
    ProfileError,
    build_profile,
    read_profile,
)
from controller.drift.stats import FeatureDrift, evaluate
from controller.drift.window import DriftReport, VersionMonitor

__all__ = [
    "PREDICTION",
    "PROFILE_FILE",
    "DriftReport",
    "FeatureDrift",
    "Profile",
    "ProfileError",
    "VersionMonitor",
    "build_profile",
    "evaluate",
    "read_profile",
]
