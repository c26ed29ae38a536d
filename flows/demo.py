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

    path = Path(
        gensim.test.utils.datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    )
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall gensim (`make install`), which ships it")
    return path


def stage_wikipedia(store: str, state: dict) -> None:
    """Wikipedia dump to article tables."""
    from flows.ingest_wikipedia import ingest_wikipedia, show_articles

    name = ingest_wikipedia(source=str(gensim_sample_dump()), store=store, name="enwiki-sample")
    state["articles"] = name
    show_articles(store, name, limit=3)


# words of the sample dump's articles on ancient Greece and the United States, for its co-occurrence table
SAMPLE_WORDS = ["aristotle", "plato", "athens", "greek", "philosophy", "lincoln", "president", "war"]


def stage_text_assets(store: str, state: dict) -> None:
    """Articles to vocabulary, token shards, co-occurrence, subword tokenizers and LDA topics."""
    from flows.build_text_assets import QUIJOTE_NAMES, build_text_assets, format_table

    made = build_text_assets(
        [state["articles"]],
        store=store,
        min_count=3,
        wordpiece_vocab_size=8_000,
        bpe_vocab_size=8_000,
        unigram_vocab_size=8_000,
        topics=20,
        stop_words="en",
        show_words=SAMPLE_WORDS,
    )
    state["text"] = made
    for step, dataset in made["datasets"].items():
        print(f"{step:>19}  {dataset}  ({made['steps'][step]})")
    shown, title = made.get("shown"), f"co-occurrence among words of {state['articles']}"
    if state["shared_data"] is not None:
        book = state["shared_data"] / "text_corpora" / "pg2000-don-quijote-es.txt"
        quijote = build_text_assets(
            [str(book)],
            store=store,
            steps=["cooccurrence"],
            text_documents="paragraph",
            show_words=QUIJOTE_NAMES,
        )
        state["quijote"] = quijote
        shown, title = quijote.get("shown"), "co-occurrence among the characters of Don Quijote"
    print(f"\n{title} (window 10, 1/distance, symmetric):")
    print(format_table(shown or []))


def demo_photo_folder(state: dict) -> Path:
    """A folder of photos with .txt captions in the work folder, made once and left as it is, so a
    second demo finds the same input and does nothing: the shared COCO photos when ../shared/data is
    there, else the sample images matplotlib installs. One file that is not an image shows a rejection."""
    import json
    import shutil

    from flows.environment import work_dir

    folder = work_dir() / "demo" / "photos"
    if folder.is_dir():
        return folder
    staging = folder.with_name(".photos-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if state["shared_data"] is not None:
        coco = state["shared_data"] / "image_text" / "coco_mini_cc_by"
        for line in (coco / "captions.jsonl").read_text().splitlines():
            record = json.loads(line)
            target = staging / Path(record["image"]).name
            shutil.copyfile(coco / record["image"], target)
            target.with_suffix(".txt").write_text(record["captions"][0])
    else:
        import matplotlib

        samples = Path(matplotlib.get_data_path()) / "sample_data"
        for name, caption in [
            ("grace_hopper.jpg", "A portrait of Grace Hopper in naval uniform."),
            ("Minduka_Present_Blue_Pack.png", "A blue gift box tied with a ribbon."),
            ("logo2.png", "The matplotlib logo."),
        ]:
            shutil.copyfile(samples / name, staging / name)
            (staging / name).with_suffix(".txt").write_text(caption)
    (staging / "readme-not-a-photo.jpg").write_text("this file is text, not a JPEG")
    staging.rename(folder)
    return folder


def stage_images(store: str, state: dict) -> None:
    """A folder of photos to WebDataset shards; the Wikipedia articles' images as Commons URLs."""
    import json

    from flows.ingest_images import ingest_images
    from storage import Store
    from storage.webdataset import iter_samples, shard_files
    from tasks.images_input import read_wikipedia_pairs

    folder = demo_photo_folder(state)
    name = ingest_images(
        source=str(folder), store=store, name="demo-photos", samples_per_shard=16, image_size=256
    )
    state["images"] = name
    dataset = Store(store).dataset(name)
    counts = dataset.manifest().counts
    print(f"{dataset.store.full_url(dataset.path)}")
    print("  " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    for shard in shard_files(dataset):
        print(f"  {shard['file']}: {shard['samples']} samples, {shard['bytes'] / 2**20:.1f} MiB")
    for sample in list(iter_samples(dataset))[:2]:
        meta = json.loads(sample["json"])
        print(
            f"  [{sample['__key__']}] {meta['original_width']}x{meta['original_height']} -> "
            f"{meta['width']}x{meta['height']}, phash {meta['phash']}: {sample['txt'].decode()}"
        )

    # the image references of the sample articles, as ingest-images would fetch them (not fetched here)
    if state.get("articles"):
        pairs = read_wikipedia_pairs(Store(store).dataset(state["articles"]))
        print(
            f"\n{pairs.height:,} image references in {pairs['page_id'].n_unique():,} articles of "
            f"{state['articles']}; `embedpipe ingest-images {state['articles']}` fetches them, e.g.:"
        )
        for record in pairs.head(3).iter_rows(named=True):
            print(f"  page {record['page_id']}: {record['url']}  ({record['caption'][:60]})")


# each word model, briefly: a few epochs on the sample dump's text assets
DEMO_MODELS = [
    ("onehot", {"min_count": "3"}),
    ("phoc", {"min_count": "3"}),
    ("word2vec", {"mode": "skipgram", "epochs": "5", "min_count": "3"}),
    ("word2vec", {"mode": "cbow", "epochs": "5", "min_count": "3"}),
    ("glove", {"epochs": "15", "min_count": "3", "x_max": "10"}),  # x_max 10 suits a corpus this small
    ("fasttext", {"epochs": "3", "min_count": "3", "bucket": "200000"}),
]


def stage_word_embeddings(store: str, state: dict) -> None:
    """Word models (one-hot, PHOC, word2vec, GloVe, fastText) trained briefly on the sample's assets."""
    from flows.evaluate import nearest_words
    from flows.train import train

    tokens = state["text"]["datasets"]["tokens"]
    text = tokens.split("/")[1]
    state["text_name"] = text
    runs = [
        train(model=model, store=store, overrides=overrides, text=text) for model, overrides in DEMO_MODELS
    ]
    state["word_runs"] = runs
    for run in runs[2:]:
        for word, near in nearest_words(store, run, ["greek", "war"], count=6).items():
            print(f"  {run.removeprefix('runs/')}  {word}: " + ", ".join(w for w, _ in near))


# each contextual model at its small size, a few minutes of CPU in all: enough for the loss to fall
# and the evaluation to run end to end, far from what they learn in the base size on a GPU
DEMO_CONTEXTUAL = [
    ("elmo", {"max_steps": "150", "batch_size": "32", "min_count": "3"}),
    ("bert", {"steps": "150", "batch_size": "16"}),
    ("gpt", {"steps": "150", "batch_size": "16"}),
    ("t5", {"steps": "150", "batch_size": "16"}),
]


def stage_contextual(store: str, state: dict) -> None:
    """Contextual models (ELMo, BERT, GPT, T5) pretrained briefly, then every run evaluated: one leaderboard."""
    from flows.evaluate import evaluate
    from flows.train import train

    text = state["text_name"]
    runs = [
        train(model=model, store=store, overrides=overrides, text=text)
        for model, overrides in DEMO_CONTEXTUAL
    ]
    state["contextual_runs"] = runs
    print(
        "\nleaderboard (analogies: Google set, 3CosAdd/3CosMul; similarity: Spearman; senses: words told apart"
    )
    print("by context; held out: the contextual models' own objectives on articles they never saw):")
    evaluate(runs=[*state["word_runs"], *runs], store=store)
    print(f"\nexported models: {', '.join(f'{store}/{r}' for r in runs)}")


# the stages, in order; each takes the store URL and a dict of what earlier stages made
STAGES: list[Callable[[str, dict], None]] = [
    stage_wikipedia,
    stage_text_assets,
    stage_word_embeddings,
    stage_contextual,
    stage_images,
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
