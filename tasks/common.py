"""What every stage shares: run logging, progress reporting, and the cache that agrees with the store."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from storage import Dataset, Recipe
from storage.manifest import digest

_fallback = logging.getLogger("embedpipe")


class InputError(ValueError):
    """Bad input a user can fix: the message names the thing and the fix; the CLI shows no traceback."""


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, a plain logger elsewhere (tests, notebooks)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return _fallback


def in_run() -> bool:
    from prefect.context import FlowRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:120] or "embedpipe"


class StoreCache(CachePolicy):
    """Cache on the recipe's fingerprint, but only while the store holds the dataset it made.

    The task must take ``dataset`` (a storage.Dataset) and ``recipe`` (a storage.Recipe), and may
    take ``part`` (a chunk or shard number) when it is mapped over the parts of one dataset. When the
    dataset is finished from this very recipe the key is its fingerprint, so Prefect reports the
    task Cached; when the store lacks it (deleted, interrupted, or never made) there is no key and the
    task runs. A cached state therefore always means the data is there.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        dataset, recipe = inputs.get("dataset"), inputs.get("recipe")
        if not isinstance(dataset, Dataset) or not isinstance(recipe, Recipe):
            return None
        if not dataset.is_current(recipe):
            return None
        # one key per task and part: several tasks of a flow may share a dataset and recipe
        part = inputs.get("part")
        return artifact_key(task_ctx.task.name) + "-" + digest([recipe.fingerprint, dataset.name, part])


STORE_CACHE = StoreCache()


class Progress:
    """Throttled progress: a log line every ``every_s`` seconds and a Prefect progress artifact.

    progress = Progress("parse chunk 3", total=12_000, unit="pages")
    progress.advance(1)          # per record, cheap
    progress.finish()
    """

    def __init__(
        self, what: str, total: int | None, unit: str, *, every_s: float = 10.0, artifact: bool = True
    ):
        self.what = what
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self.done = 0
        self.started = time.perf_counter()
        self._last = self.started
        self._logger = run_logger()
        self._artifact_id = None
        if artifact and total and in_run():
            from prefect.artifacts import create_progress_artifact

            self._artifact_id = create_progress_artifact(
                progress=0.0, description=f"{what}: {unit} done out of {total:,}"
            )

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.started, 1e-9)

    def line(self) -> str:
        head = f"{self.what}: {self.done:,}"
        if self.total:
            head += f"/{self.total:,} ({100 * self.done / self.total:.1f}%)"
        return f"{head} {self.unit}, {self.rate:,.1f} {self.unit}/s"

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._report()

    def _report(self) -> None:
        self._logger.info(self.line())
        if self._artifact_id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._artifact_id, progress=min(100.0, 100 * self.done / self.total))

    def finish(self) -> float:
        """Log the final line; returns the elapsed seconds."""
        self._report()
        return time.perf_counter() - self.started
