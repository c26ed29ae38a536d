"""`make demo`: the whole pipeline, offline, on samples a fresh machine has after `pip install`.

    python -m flows.demo [--store DIR]

Each stage runs one flow on the output of the stages before it and prints where its results are;
the runs show in the Prefect UI that `make server` opens afterwards. A stage whose inputs are
unchanged finds its manifests and does nothing, so a second `make demo` takes seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults before Prefect is imported)
from flows.environment import default_store

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def gensim_sample_dump() -> Path:
    """The English sample dump (206 pages) that the gensim package ships with its test data."""
    import gensim.test.utils

    path = Path(gensim.test.utils.datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"))
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall gensim (`make install`), which ships it")
    return path


def stage_wikipedia(store: str, state: dict) -> None:
    """Wikipedia dump to article tables."""
    from flows.ingest_wikipedia import ingest_wikipedia, show_articles

    name = ingest_wikipedia(source=str(gensim_sample_dump()), store=store, name="enwiki-sample")
    state["articles"] = name
    show_articles(store, name, limit=3)


# the stages, in order; each takes the store URL and a dict of what earlier stages made
STAGES: list[Callable[[str, dict], None]] = [
    stage_wikipedia,
]


def run_demo(store: str) -> dict:
    state: dict = {"shared_data": SHARED_DATA if SHARED_DATA.is_dir() else None}
    for stage in STAGES:
        started = time.perf_counter()
        print(f"\n== {stage.__doc__.strip()}", flush=True)
        stage(store, state)
        print(f"== done in {time.perf_counter() - started:.1f} s", flush=True)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=default_store())
    args = parser.parse_args(argv)
    run_demo(args.store)
    print("\nOpen the runs in the Prefect UI: make server, then http://127.0.0.1:4200")
    return 0


if __name__ == "__main__":
    sys.exit(main())
