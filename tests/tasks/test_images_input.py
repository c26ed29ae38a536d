"""Inputs of the image flow: URL tables in four formats, image folders, and Wikipedia articles."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import Manifest, Recipe
from storage.schemas import ARTICLES
from tasks.common import InputError
from tasks.images_input import INPUT_ROWS, Source, input_file, read_pairs, split_input


def test_img2dataset_input_works_unchanged(store, shared_data):
    """The 10,000-row URL/TEXT Parquet that img2dataset's own tests use: upper-case column names."""
    path = shared_data / "image_text" / "url_caption_metadata" / "img2dataset-test_10000-url-text.parquet"
    original = pq.read_table(path)
    source = Source(str(path), store)
    assert source.kind == "parquet" and source.name == "img2dataset-test_10000-url-text"
    pairs = read_pairs(source)
    assert pairs.height == original.num_rows == 10_000
    assert pairs["url"].to_list()[:50] == [u.strip() for u in original.column("URL").to_pylist()[:50]]
    assert pairs["caption"].to_list()[:50] == original.column("TEXT").to_pylist()[:50]
    assert pairs["source_row"].to_list() == list(range(10_000))


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_table_formats_and_named_columns(store, tmp_path, kind):
    rows = [
        {"link_to_image": "http://a.example/1.jpg", "alt text": "one, with a comma", "page_id": 7},
        {"link_to_image": "http://a.example/2.jpg", "alt text": 'two "quoted"', "page_id": None},
    ]
    path = tmp_path / f"pairs.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame = pl.DataFrame(
            rows, schema={"link_to_image": pl.String, "alt text": pl.String, "page_id": pl.Int64}
        )
        if kind == "parquet":
            frame.write_parquet(path)
        else:
            frame.write_csv(path, separator="\t" if kind == "tsv" else ",")
    source = Source(str(path), store)
    with pytest.raises(InputError, match="--url-col"):
        read_pairs(source)
    pairs = read_pairs(source, url_col="link_to_image", caption_col="alt text")
    assert pairs["url"].to_list() == ["http://a.example/1.jpg", "http://a.example/2.jpg"]
    assert pairs["caption"].to_list() == ["one, with a comma", 'two "quoted"']
    assert pairs["page_id"].to_list() == [7, None]


def test_a_list_of_captions_gives_the_first(store, tmp_path):
    path = tmp_path / "coco.jsonl"
    path.write_text(json.dumps({"url": "http://x/1.jpg", "captions": ["first", "second"]}) + "\n")
    pairs = read_pairs(Source(str(path), store), caption_col="captions")
    assert pairs["caption"].to_list() == ["first"]


def test_bad_inputs_say_what_to_give(store, tmp_path):
    with pytest.raises(InputError, match="neither a file, a folder, nor a finished dataset"):
        Source(str(tmp_path / "nowhere.parquet"), store)
    (tmp_path / "urls.xlsx").write_bytes(b"PK")
    with pytest.raises(InputError, match="unknown table format '.xlsx'"):
        Source(str(tmp_path / "urls.xlsx"), store)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable parquet table"):
        read_pairs(Source(str(tmp_path / "broken.parquet"), store))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        read_pairs(Source(str(tmp_path / "empty"), store))
    (tmp_path / "t.csv").write_text("url,caption\nhttp://x/1.jpg,a\n")
    with pytest.raises(InputError, match="no column 'URL'.*fix --url-col"):
        read_pairs(Source(str(tmp_path / "t.csv"), store), url_col="URL")
    other = store.dataset("text/corpus")
    recipe = Recipe("text-corpus", {}, {}, "1")
    other.begin(recipe)
    other.commit(Manifest.from_recipe(recipe))
    with pytest.raises(InputError, match="is a 'text-corpus'"):
        Source("text/corpus", store)


def test_split_marks_repeated_urls_and_writes_partitions(store, tmp_path):
    urls = [
        "http://h/a.jpg",
        "http://h/b.jpg",
        "http://h/a.jpg",
        None,
        "http://h/c.jpg",
        "http://h/b.jpg",
        None,
    ]
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [f"c{n}" for n in range(7)]}), path)
    dataset = store.dataset("images/split")
    dataset.begin(Recipe("image-shards", {}, {}, "1"))
    info = split_input(dataset, Source(str(path), store), partition_rows=3)
    assert info == {"rows": 7, "partitions": 3, "url_repeats": 2}
    parts = [pq.read_table(dataset.file(input_file(n))) for n in range(3)]
    assert [p.num_rows for p in parts] == [3, 3, 1] and all(p.schema.equals(INPUT_ROWS) for p in parts)
    rows = pa.concat_tables(parts).to_pylist()
    assert [r["row"] for r in rows] == list(range(7))
    assert [r["repeat_of"] for r in rows] == [
        None,
        None,
        0,
        None,
        None,
        1,
        None,
    ]  # missing URLs repeat nothing
    assert split_input(dataset, Source(str(path), store), partition_rows=3) == info  # finished: read back


def test_wikipedia_articles_as_a_dataset(store):
    """Articles built from ARTICLES rows: each image reference is a row with its article's page id."""
    articles = [
        {
            "page_id": 12,
            "namespace": 0,
            "title": "Anarchism",
            "text": "x",
            "images": [
                {
                    "file": "Paris Commune.jpg",
                    "caption": "barricade",
                    "url": "https://upload.wikimedia.org/a/ab/Paris_Commune.jpg",
                },
                {
                    "file": "Kropotkin_1900.png",
                    "caption": "",
                    "url": "https://upload.wikimedia.org/c/cd/Kropotkin_1900.png",
                },
            ],
        },
        {"page_id": 25, "namespace": 0, "title": "Autism", "text": "y", "images": []},
        {
            "page_id": 39,
            "namespace": 0,
            "title": "Albedo",
            "text": "z",
            "images": [
                {
                    "file": "Albedo.svg",
                    "caption": "percent reflected",
                    "url": "https://upload.wikimedia.org/e/ef/Albedo.svg",
                },
            ],
        },
    ]
    dataset = store.dataset("wikipedia/tiny")
    recipe = Recipe("wikipedia-articles", {}, {}, "1")
    dataset.begin(recipe)
    dataset.write_table("articles/part-00000.parquet", pa.Table.from_pylist(articles, schema=ARTICLES))
    dataset.commit(
        Manifest.from_recipe(recipe, tables={"articles": (ARTICLES, ["articles/part-00000.parquet"], 3)})
    )
    source = Source("wikipedia/tiny", store)
    assert (source.kind, source.name) == ("wikipedia", "tiny")
    assert source.fingerprint() == dataset.manifest().fingerprint
    pairs = read_pairs(source)
    assert pairs.to_dicts() == [
        {"source_row": 0, "url": articles[0]["images"][0]["url"], "caption": "barricade", "page_id": 12},
        {"source_row": 0, "url": articles[0]["images"][1]["url"], "caption": "Kropotkin 1900", "page_id": 12},
        {
            "source_row": 2,
            "url": articles[2]["images"][0]["url"],
            "caption": "percent reflected",
            "page_id": 39,
        },
    ]


@pytest.mark.slow
def test_wikipedia_images_of_the_english_sample_dump(prefect_server, store):
    """ingest-wikipedia on the sample dump gensim ships, then its image references as image rows."""
    import hashlib
    from urllib.parse import unquote

    from flows.demo import gensim_sample_dump
    from flows.ingest_wikipedia import ingest_wikipedia

    name = ingest_wikipedia(str(gensim_sample_dump()), store=store.url, name="enwiki-sample")
    articles = store.dataset(name).read_table("articles", columns=["page_id", "images"]).to_pylist()
    references = [(a["page_id"], image) for a in articles for image in a["images"]]
    assert len(references) > 50

    dataset = store.dataset("images/enwiki-sample")
    dataset.begin(Recipe("image-shards", {}, {}, "1"))
    info = split_input(dataset, Source(name, store), partition_rows=1000)
    rows = pa.concat_tables(
        [pq.read_table(dataset.file(input_file(n))) for n in range(info["partitions"])]
    ).to_pylist()
    assert info["rows"] == len(rows) == len(references)
    assert [(r["page_id"], r["url"]) for r in rows] == [(p, image["url"]) for p, image in references]
    for row, (_, image) in zip(rows, references, strict=True):
        # upload.wikimedia.org/wikipedia/commons/<md5[0]>/<md5[:2]>/<file name>, as Commons stores it
        file_name = image["file"].strip().replace(" ", "_")
        file_name = file_name[:1].upper() + file_name[1:]  # MediaWiki titles start upper-case
        md5 = hashlib.md5(file_name.encode()).hexdigest()
        prefix = f"https://upload.wikimedia.org/wikipedia/commons/{md5[0]}/{md5[:2]}/"
        assert row["url"].startswith(prefix) and unquote(row["url"][len(prefix) :]) == file_name
        assert row["caption"]  # the reference's caption, or the file's name when it has none
    assert {r["page_id"] for r in rows} <= {a["page_id"] for a in articles}
