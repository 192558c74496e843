"""The ``built`` fixture of the state-space model tests (see ``ssm_helpers.py``)."""

from ssm_helpers import built  # noqa: F401  (a fixture made visible to this directory)
