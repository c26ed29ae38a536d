"""Defaults that let a flow run on a fresh machine with no server to start.

Read before Prefect is imported: with no PREFECT_API_URL a flow starts Prefect's temporary local
server, which keeps its database under PREFECT_HOME. Putting PREFECT_HOME in the work folder keeps
every run of the CLI, the demo and `make server` on one database, so the UI shows them all.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    # a fresh PREFECT_HOME needs 20-30 s to migrate its database on two cores, past Prefect's default
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LOG_PRINTS": "true",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def work_dir() -> Path:
    """The work folder: EMBEDPIPE_HOME, or ./work beside where the command runs."""
    return Path(os.environ.get("EMBEDPIPE_HOME", "work")).absolute()


def default_store() -> str:
    return os.environ.get("EMBEDPIPE_STORE", str(work_dir() / "store"))


def apply_defaults() -> None:
    """Set the environment defaults above without overriding anything the user has set."""
    os.environ.setdefault("PREFECT_HOME", str(work_dir() / "prefect"))
    # Prefect's server makes PREFECT_HOME but not its parents, and with no folder for its SQLite file
    # the temporary server dies at startup while the client waits out its whole timeout
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
