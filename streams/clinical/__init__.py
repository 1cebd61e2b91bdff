"""The clinical core: FACT-L scoring, the policy, events, escalations and the engine.

Pure and standard-library only: it imports nothing of the rest of stepcare (checked by
``tests/unit/test_architecture.py``), so a clinician can read the rules in one place and an
analyst replays history through exactly the code the worker runs.
"""

from streams.clinical.events import EventError
from streams.clinical.policy import PolicyError
from streams.clinical.scoring import ScoringError

# Errors of the core on bad input. They are ValueErrors (the core imports nothing of the project,
# so not streams.errors.StepcareError); the CLI catches them beside that root.
INPUT_ERRORS: tuple[type[ValueError], ...] = (EventError, PolicyError, ScoringError)
