"""The steps of ingest-wikipedia: plan chunks of a dump, parse each chunk, write the manifest.

Output, a dataset of the store (kind "wikipedia-articles"):
    articles/chunk-NNNNN-NNNNN.parquet   storage.schemas.ARTICLES, zstd, bounded rows and bytes
    redirects/chunk-NNNNN-NNNNN.parquet  storage.schemas.REDIRECTS
    rejects/chunk-NNNNN-NNNNN.parquet    storage.schemas.REJECTS: page id, title, reason, detail
    _parts/chunk-NNNNN.json              a finished chunk's counts, files and digest (resume marker)
    manifest.json                        written last
Every page that enters is counted once: articles + redirects + other_namespace +
empty_after_cleaning + rejected = pages_in.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import task

from storage import Dataset, Manifest, Recipe
from storage.parquet import RollingParquetWriter
from storage.schemas import ARTICLES, REDIRECTS, REJECTS
from storage.store import PARTS_DIR
from tasks.common import STORE_CACHE, Progress, run_logger
from tasks.dumps import Chunk, plan_chunks
from tasks.wikitext import Cleaner
from tasks.wikixml import BadPage, SiteInfo, decompressed_blocks, iter_pages, read_ahead, read_siteinfo

KIND = "wikipedia-articles"
CODE_MODULES = ("tasks.wikipedia", "tasks.wikitext", "tasks.wikixml", "tasks.dumps")
COUNT_KEYS = ("pages_in", "articles", "redirects", "other_namespace", "empty_after_cleaning", "rejected")


def chunk_name(number: int) -> str:
    return f"chunk-{number:05d}"


@task(name="plan-chunks", cache_policy=STORE_CACHE, persist_result=True)
def plan(dataset: Dataset, recipe: Recipe, dump: str, index: str | None, chunk_bytes: int) -> dict[str, Any]:
    """Read the dump's siteinfo and cut it into chunks of whole streams; prepare the dataset folder."""
    logger = run_logger()
    path = Path(dump)
    with open(path, "rb") as f:
        siteinfo, _ = read_siteinfo(decompressed_blocks(f, dump), dump)
    chunks = plan_chunks(path, chunk_bytes, Path(index) if index else None)
    if not dataset.is_current(recipe):  # a finished dataset is only read, never begun again
        dataset.begin(resumable(recipe))
    resumed = sum(_finished(dataset, c) is not None for c in chunks)
    logger.info(
        "%s: %s, schema %s, %d namespaces; %d chunk(s) of ~%.0f MB%s",
        path.name,
        siteinfo.dbname or "no siteinfo",
        siteinfo.schema_version or "?",
        len(siteinfo.namespaces),
        len(chunks),
        chunk_bytes / 2**20,
        f", {resumed} already finished" if resumed else "",
    )
    return {"siteinfo": siteinfo.to_dict(), "chunks": chunks}


def resumable(recipe: Recipe) -> Recipe:
    """The recipe a run keeps finished chunks under: the dump by path, not by size and time.

    A dump completed or downloaded again in place keeps the chunks whose bytes are unchanged (each
    chunk's digest says so); other parameters or code start the dataset over.
    """
    return Recipe(recipe.kind, {"dump": recipe.inputs["dump"]}, recipe.parameters, recipe.code_version)


def _finished(dataset: Dataset, chunk: Chunk) -> dict[str, Any] | None:
    """A chunk's part marker, if it was finished from the bytes the file holds there now."""
    done = dataset.finished_part(chunk_name(chunk.number))
    return done if done is not None and done.get("digest") == chunk.digest else None


def _is_redirect_text(text: str | None) -> bool:
    return bool(text) and text.lstrip()[:9].upper() == "#REDIRECT"


@task(name="parse-chunk", cache_policy=STORE_CACHE, persist_result=True)
def parse_chunk(
    dataset: Dataset,
    recipe: Recipe,
    part: int,
    dump: str,
    chunk: Chunk,
    chunks: int,
    siteinfo: dict[str, Any],
    namespaces: list[int],
    max_rows_per_file: int,
    max_bytes_per_file: int,
    disambiguation_templates: list[str],
) -> dict[str, Any]:
    """Parse and clean every page of one chunk into Parquet; a finished chunk is never parsed twice."""
    logger = run_logger()
    name = chunk_name(chunk.number)
    if (done := _finished(dataset, chunk)) is not None:
        logger.info("%s already finished (%s articles): skipped", name, f"{done['counts']['articles']:,}")
        return done
    for table in ("articles", "redirects", "rejects"):  # leftovers of a killed attempt
        for stale in dataset.files(f"{table}/{name}*"):
            dataset.fs.rm(stale)

    info = SiteInfo.from_dict(siteinfo)
    wiki = info.dbname or Path(dump).name.split("-", 1)[0]
    cleaner = Cleaner(info, disambiguation_templates=set(disambiguation_templates))
    wanted = set(namespaces)
    counts: Counter[str] = Counter({key: 0 for key in COUNT_KEYS})
    progress = Progress(f"{name} ({chunk.number + 1}/{chunks})", None, "pages", artifact=False)
    text_bytes = 0

    def reject(page_id, title, reason, detail):
        counts["rejected"] += 1
        counts[f"rejected_{reason}"] += 1
        rejects.write(
            {
                "page_id": page_id,
                "title": title,
                "reason": reason,
                "detail": detail[:1000],
                "chunk": chunk.number,
            }
        )
        if counts["rejected"] == 1 or counts["rejected"] % 1000 == 0:
            logger.warning(
                "%s: page %s %r rejected (%s): %s [%d so far]",
                name,
                page_id,
                title,
                reason,
                detail[:200],
                counts["rejected"],
            )

    # every table is streamed to bounded files: a single-stream dump is one chunk, enwiki's has
    # ~10 M redirects, so nothing of a chunk is held whole
    articles = RollingParquetWriter(
        dataset,
        f"articles/{name}",
        ARTICLES,
        max_rows=max_rows_per_file,
        max_bytes=max_bytes_per_file,
        batch_rows=500,
    )
    redirects = RollingParquetWriter(dataset, f"redirects/{name}", REDIRECTS, max_rows=1_000_000)
    rejects = RollingParquetWriter(dataset, f"rejects/{name}", REJECTS, max_rows=1_000_000)
    with open(dump, "rb") as f, articles, redirects, rejects:
        for page in iter_pages(read_ahead(decompressed_blocks(f, dump, chunk.start, chunk.end)), dump):
            counts["pages_in"] += 1
            progress.advance()
            if isinstance(page, BadPage):
                reject(page.page_id, page.title, page.reason, page.detail)
            elif page.namespace not in wanted:
                counts["other_namespace"] += 1
            elif page.redirect is not None or _is_redirect_text(page.text):
                target = page.redirect or ""
                if not target:
                    # an old-style redirect with no <redirect> element: the first link is its target
                    target = page.text.split("[[", 1)[-1].split("]]", 1)[0].split("|", 1)[0].strip()
                counts["redirects"] += 1
                redirects.write(
                    {
                        "page_id": page.page_id,
                        "namespace": page.namespace,
                        "title": page.title,
                        "target": target,
                        "wiki": wiki,
                    }
                )
            elif page.text is None:
                reject(
                    page.page_id, page.title, "missing_text", "the revision has no text (deleted or hidden)"
                )
            else:
                try:
                    clean = cleaner.clean(page.text)
                except Exception as e:  # one page's markup must never stop the run
                    reject(page.page_id, page.title, "parse_error", f"{type(e).__name__}: {e}")
                    continue
                if not clean.text:
                    counts["empty_after_cleaning"] += 1
                    continue
                counts["articles"] += 1
                counts["disambiguation"] += clean.is_disambiguation
                text_bytes += len(page.text)
                articles.write(
                    {
                        "page_id": page.page_id,
                        "revision_id": page.revision_id,
                        "namespace": page.namespace,
                        "title": page.title,
                        "timestamp": page.timestamp,
                        "wiki": wiki,
                        "text": clean.text,
                        "sections": clean.sections,
                        "links": clean.links,
                        "categories": clean.categories,
                        "images": clean.images,
                        "is_disambiguation": clean.is_disambiguation,
                    },
                    size_hint=len(clean.text) * 2,
                )
                counts["images"] += len(clean.images)
    seconds = progress.finish()

    files = {"articles": articles.files, "redirects": redirects.files, "rejects": rejects.files}
    rows = {"articles": articles.rows, "redirects": redirects.rows, "rejects": rejects.rows}
    result = {
        "chunk": chunk.number,
        "counts": dict(counts),
        "files": files,
        "rows": rows,
        "seconds": seconds,
        "compressed_bytes": chunk.size,
        "wikitext_bytes": text_bytes,
        "digest": chunk.digest,
    }
    dataset.part_done(name, result)
    logger.info(
        "%s done: %s pages in %.1f s (%.1f pages/s, %.2f MB/s of compressed dump), %s articles",
        name,
        f"{counts['pages_in']:,}",
        seconds,
        counts["pages_in"] / max(seconds, 1e-9),
        chunk.size / 2**20 / max(seconds, 1e-9),
        f"{counts['articles']:,}",
    )
    return result


@task(name="write-manifest", cache_policy=STORE_CACHE, persist_result=True)
def finalize(
    dataset: Dataset, recipe: Recipe, chunks: list[Chunk], siteinfo: dict[str, Any]
) -> dict[str, Any]:
    """Check every chunk finished, add up their counts, and write the manifest last."""
    if dataset.is_current(recipe):
        return summary(dataset)
    parts = [_finished(dataset, c) for c in chunks]
    missing = [chunk_name(c.number) for c, p in zip(chunks, parts, strict=True) if p is None]
    if missing:
        raise RuntimeError(
            f"{dataset.name}: {len(missing)} chunk(s) unfinished ({', '.join(missing[:5])}); run again"
        )
    counts: Counter[str] = Counter()
    files: dict[str, list[str]] = {"articles": [], "redirects": [], "rejects": []}
    rows: Counter[str] = Counter()
    for part in parts:
        counts.update(part["counts"])
        rows.update(part["rows"])
        for table, names in part["files"].items():
            files[table].extend(names)
    for stale in dataset.finished_parts().values():  # chunks past the end of a file now shorter
        if stale["chunk"] >= len(chunks):
            for name in [f for names in stale["files"].values() for f in names]:
                dataset.fs.rm(dataset.file(name))
            dataset.fs.rm(dataset.file(f"{PARTS_DIR}/{chunk_name(stale['chunk'])}.json"))
    accounted = sum(counts[k] for k in COUNT_KEYS[1:])
    if accounted != counts["pages_in"]:
        raise AssertionError(f"{dataset.name}: {accounted} pages accounted for out of {counts['pages_in']}")
    seconds = sum(p["seconds"] for p in parts)
    manifest = Manifest.from_recipe(
        recipe,
        tables={
            "articles": (ARTICLES, files["articles"], rows["articles"]),
            "redirects": (REDIRECTS, files["redirects"], rows["redirects"]),
            "rejects": (REJECTS, files["rejects"], rows["rejects"]),
        },
        counts=dict(counts),
        metrics={
            "siteinfo": siteinfo,
            "chunks": len(chunks),
            "parse_seconds": round(seconds, 3),
            "pages_per_second_per_process": round(counts["pages_in"] / max(seconds, 1e-9), 2),
            "compressed_bytes": sum(c.size for c in chunks),
        },
    )
    dataset.commit(manifest)
    return summary(dataset)


def summary(dataset: Dataset) -> dict[str, Any]:
    """A finished dataset's counts, in total and per chunk, for the run's artifacts."""
    manifest = dataset.manifest()
    parts = dataset.finished_parts().values()
    return {
        "dataset": dataset.name,
        "counts": manifest.counts,
        "per_chunk": [
            {
                "chunk": p["chunk"],
                **{k: p["counts"].get(k, 0) for k in COUNT_KEYS},
                "seconds": round(p["seconds"], 2),
            }
            for p in sorted(parts, key=lambda p: p["chunk"])
        ],
    }


def wait_and_report(futures: list, total: int) -> list[dict[str, Any]]:
    """Results of the mapped chunk tasks as they finish, with a progress artifact over chunks."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.futures import as_completed

    logger = run_logger()
    artifact = create_progress_artifact(progress=0.0, description=f"chunks parsed out of {total}")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    pages = 0
    errors: list[BaseException] = []
    for done, future in enumerate(as_completed(futures), 1):
        try:
            result = future.result()
        except BaseException as e:  # let every other chunk finish, so a re-run resumes from them
            errors.append(e)
            continue
        results.append(result)
        pages += result["counts"]["pages_in"]
        elapsed = time.perf_counter() - started
        logger.info(
            "%d/%d chunks (%.0f%%), %s pages, %.1f pages/s overall",
            done,
            total,
            100 * done / total,
            f"{pages:,}",
            pages / max(elapsed, 1e-9),
        )
        update_progress_artifact(artifact, progress=100 * done / total)
    if errors:
        raise errors[0]
    return results
