"""Prefect flows: the steps a person runs, schedules or re-runs. One module per flow."""

from flows.environment import apply_defaults

apply_defaults()
