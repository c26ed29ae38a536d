"""Corpus, vocabulary and token shards: text splitting, accounting of every document, ids and drops."""

from __future__ import annotations

import bz2
import html
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import regex

from storage import Manifest, Recipe
from storage.schemas import ARTICLES
from tasks import corpus as cp
from tasks.common import InputError


def write_articles(store, name: str, rows: list[tuple[int, str, str]], wiki: str | None = "testwiki"):
    """An articles dataset as ingest-wikipedia leaves it: (page id, title, text) rows in one file."""
    dataset = store.dataset(f"wikipedia/{name}")
    recipe = Recipe(cp.ARTICLES_KIND, {"dump": name}, {}, "test")
    dataset.begin(recipe)
    table = pa.Table.from_pylist(
        [{"page_id": p, "namespace": 0, "title": t, "text": x, "wiki": wiki} for p, t, x in rows],
        schema=ARTICLES,
    )
    dataset.write_table("articles/part-00000.parquet", table)
    dataset.commit(
        Manifest.from_recipe(
            recipe, tables={"articles": (ARTICLES, ["articles/part-00000.parquet"], len(rows))}
        )
    )
    return dataset.name


def build_tokens(store, inputs, name="t", options=None, min_count=1, max_size=None):
    return cp.build_in_process(store, inputs, name, options, min_count=min_count, max_size=max_size)


# --- text ---------------------------------------------------------------------------------------


def test_sentences_keep_abbreviations_initials_and_numbers_whole():
    options = cp.CorpusOptions()
    found = options.sentences(
        "Dr. Smith paid 3.14 dollars. J. R. R. Tolkien wrote it! Did he? Yes, e.g. this."
    )
    assert [s for s, _ in found] == [
        "Dr. Smith paid 3.14 dollars.",
        "J. R. R. Tolkien wrote it!",
        "Did he?",
        "Yes, e.g. this.",
    ]
    assert found[0][1] == ["dr", "smith", "paid", "3.14", "dollars"]


def test_spanish_dialogue_quotes_and_case():
    options = cp.CorpusOptions(lowercase=False)
    found = options.sentences("«¿Quién es?», preguntó Sancho. —Don Quijote de la Mancha—respondió él.")
    assert [w for _, w in found] == [
        ["Quién", "es", "preguntó", "Sancho"],
        ["Don", "Quijote", "de", "la", "Mancha", "respondió", "él"],
    ]


def test_normalization_folds_compatibility_forms_and_invisible_characters():
    text = "Ｆｕｌｌ\u00adwidth ﬁne caf\u0065\u0301 l’homme\u200b ok"
    # a soft hyphen only marks where a word may break: the word stays whole
    assert cp.CorpusOptions().sentences(text)[0][1] == ["fullwidth", "fine", "café", "l'homme", "ok"]
    # NFC keeps the full-width letters and the ligature, but composes é
    assert cp.CorpusOptions(normalization="NFC").sentences(text)[0][1][1:3] == ["ﬁne", "café"]


def test_han_characters_are_one_token_each_and_wide_stops_split():
    found = cp.CorpusOptions().sentences("北京是首都。上海很大。")
    assert found == [
        ("北京是首都。", ["北", "京", "是", "首", "都"]),
        ("上海很大。", ["上", "海", "很", "大"]),
    ]


def _latgalian_prose(shared_data, limit=200) -> list[str]:
    """Lines of prose from the Latgalian dump, with link and bold markup taken off."""
    path = shared_data / "wikipedia_xml" / "dumpster-dive-ltgwiki-smallwiki-pages-articles.xml.bz2"
    lines = []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = html.unescape(line.strip())
            if len(line) < 80 or line[0] in "{|!<[*=#:&" or "{{" in line or "<" in line:
                continue
            line = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", line).replace("'''", "").replace("''", "")
            lines.append(line)
            if len(lines) == limit:
                break
    return lines


def test_latgalian_words_keep_their_letters(shared_data):
    """Latgalian letters (ā, ē, ī, ō, ū, ļ, ņ, š, ž, č) never split a word, nor stay as loose marks."""
    lines = _latgalian_prose(shared_data)
    assert len(lines) >= 50
    options = cp.CorpusOptions()
    words = Counter(w for line in lines for _, ws in options.sentences(line) for w in ws)
    assert {"volūdu", "latgaļu", "latgolys", "vīns"} & set(words)
    assert sum(c for w, c in words.items() if re.search("[āēīōūļņšžč]", w)) > 200
    # every word is letters (with their marks: Hebrew quotes keep their points), digits and joiners
    assert all(regex.fullmatch(r"[\p{L}\p{M}\p{N}'·.,\-]+", w) for w in words)
    assert not any(regex.fullmatch(r"\p{M}+", w) for w in words)
    for line in lines[:50]:
        # the plain words of a line, split at spaces and stripped of punctuation, come out whole
        plain = [w.strip('.,:;!?()"«»').lower() for w in line.split()]
        plain = [w for w in plain if w.isalpha()]
        found = [w for _, ws in options.sentences(line) for w in ws]
        assert all(w in found for w in plain), line


# --- corpus -------------------------------------------------------------------------------------


def test_every_document_is_counted_empty_one_word_and_repeated(store, tmp_path):
    first = write_articles(
        store,
        "one",
        [
            (1, "Full", "Sancho rode the donkey. The donkey was grey.\n\nA second paragraph here."),
            (2, "Empty", ""),
            (3, "One word", "Rocinante"),
            (4, "Markup only", "  ... ¡! "),
        ],
    )
    # the same page 1 again (another run of the same dump) and a new page
    second = write_articles(store, "two", [(1, "Full", "Sancho again."), (5, "New", "Dulcinea del Toboso.")])
    text = tmp_path / "book.txt"
    text.write_text("first line of text\n\nthird line. and more\n")
    corpus, vocabulary, tokens = build_tokens(store, [first, second, str(text)])

    counts = corpus.manifest().counts
    assert counts["documents_in"] == 4 + 2 + 3
    assert counts["rejected_duplicate_article"] == 1
    assert counts["documents"] == 8
    assert counts["documents_empty"] == 3  # "", markup only, and the blank line
    articles = corpus.read_table("articles").to_pylist()
    assert len(articles) == 8
    by_title = {a["title"]: a for a in articles}
    assert by_title["Empty"]["sentences"] == 0 and by_title["Empty"]["words"] == 0
    assert by_title["One word"]["sentences"] == 1 and by_title["One word"]["words"] == 1
    assert by_title["Full"]["sentences"] == 3
    assert {a["source"] for a in articles} == {"testwiki", "book.txt"}
    assert sorted(a["article_id"] for a in articles if a["source"] == "book.txt") == [1, 2, 3]
    rejects = corpus.read_table("rejects").to_pylist()
    assert [(r["page_id"], r["reason"]) for r in rejects] == [(1, "duplicate_article")]

    sentences = corpus.read_table("sentences")
    assert sentences.num_rows == counts["sentences"] == 3 + 1 + 1 + 1 + 1  # "line. and" goes on
    assert sum(len(w) for w in sentences["words"].to_pylist()) == counts["words"]
    assert len(set(corpus.read_table("articles")["doc"].to_pylist())) == 8
    word_counts = Counter()
    for row in corpus.read_table("word_counts").to_pylist():
        word_counts[row["token"]] += row["count"]
    assert word_counts["donkey"] == 2 and word_counts["sancho"] == 1
    assert sum(word_counts.values()) == counts["words"]


def test_plain_text_paragraph_documents_and_compressed_input(store, tmp_path):
    path = tmp_path / "book.txt.bz2"
    path.write_bytes(bz2.compress("Capítulo uno.\nSegunda línea.\n\n\nOtro párrafo.\n".encode()))
    corpus, _, _ = build_tokens(store, [str(path)], options=cp.CorpusOptions(text_documents="paragraph"))
    articles = corpus.read_table("articles").to_pylist()
    assert [(a["article_id"], a["sentences"], a["words"]) for a in articles] == [(1, 2, 4), (5, 1, 2)]
    assert corpus.read_table("sentences")["words"].to_pylist()[1] == ["segunda", "línea"]


def test_truncated_text_file_names_the_file(store, tmp_path):
    path = tmp_path / "cut.txt.bz2"
    path.write_bytes(bz2.compress(("una línea\n" * 5000).encode())[:-200])
    with pytest.raises(InputError, match="cut.txt.bz2.*truncated or corrupt"):
        build_tokens(store, [str(path)])


def test_inputs_that_are_neither_articles_nor_text_are_refused(store, tmp_path):
    with pytest.raises(InputError, match="neither an articles dataset"):
        cp.resolve_inputs(store, ["wikipedia/nothing-here"])
    with pytest.raises(InputError, match="not found"):
        cp.resolve_inputs(store, [str(tmp_path / "missing.txt")])
    other = store.dataset("images/x")
    recipe = Recipe("image-shards", {}, {}, "test")
    other.begin(recipe)
    other.commit(Manifest.from_recipe(recipe))
    with pytest.raises(InputError, match="'image-shards' dataset"):
        cp.resolve_inputs(store, ["images/x"])
    with pytest.raises(InputError, match="no input"):
        cp.resolve_inputs(store, [])


# --- vocabulary and token shards ----------------------------------------------------------------


def test_vocabulary_ids_follow_frequency_with_min_count_and_max_size(store, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a a a a b b b c c c d d e\nb e f\n")  # a 4, b 4, c 3, d 2, e 2, f 1
    _, vocabulary, _ = build_tokens(store, [str(text)], min_count=2, max_size=4)
    table = vocabulary.read_table("vocabulary").to_pylist()
    assert [(r["id"], r["token"], r["count"]) for r in table] == [
        (0, "a", 4),
        (1, "b", 4),
        (2, "c", 3),
        (3, "d", 2),
    ]
    counts = vocabulary.manifest().counts
    assert (
        counts["types_in"] == 6
        and counts["types_below_min_count"] == 1
        and counts["types_over_max_size"] == 1
    )
    assert counts["tokens_in"] == 16 and counts["tokens_out_of_vocabulary"] == 3


def test_token_shards_hold_in_vocabulary_ids_row_for_row(store, shared_data, tmp_path):
    book = (shared_data / "text_corpora" / "pg2000-don-quijote-es.txt").read_text(encoding="utf-8")
    path = tmp_path / "quijote.txt"
    path.write_text("\n".join(book.splitlines()[2000:4000]), encoding="utf-8")
    options = cp.CorpusOptions(text_documents="paragraph", shard_sentences=300)
    corpus, vocabulary, tokens = build_tokens(store, [str(path)], options=options, min_count=3)

    words = vocabulary.read_table("vocabulary")["token"].to_pylist()
    assert (
        len(tokens.manifest().tables["tokens"]["files"])
        == len(corpus.manifest().tables["sentences"]["files"])
        > 2
    )
    assert tokens.read_table("vocabulary").equals(vocabulary.read_table("vocabulary"))
    dropped = 0
    for sentence_file, token_file in zip(
        corpus.table_files("sentences"), tokens.table_files("tokens"), strict=True
    ):
        sentences = pq.read_table(sentence_file).to_pylist()
        shard = pq.read_table(token_file).to_pylist()
        assert len(sentences) == len(shard)
        for s, t in zip(sentences, shard, strict=True):
            assert (s["doc"], s["article_id"], s["sentence"]) == (t["doc"], t["article_id"], t["sentence"])
            kept = [w for w in s["words"] if w in set(words)]
            assert [words[i] for i in t["tokens"]] == kept
            dropped += len(s["words"]) - len(kept)
    counts = tokens.manifest().counts
    assert dropped > 0 and counts["tokens_out_of_vocabulary"] == dropped
    assert counts["tokens"] + dropped == corpus.manifest().counts["words"]
    assert counts["sentences_without_tokens"] >= 0


def test_a_finished_part_is_not_redone(store, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("uno dos tres\n")
    options = cp.CorpusOptions()
    resolved = cp.resolve_inputs(store, [str(text)])
    corpus = store.dataset("text/r/corpus")
    recipe = cp.corpus_recipe(resolved, options)
    (part,) = cp.plan_corpus.fn(corpus, recipe, resolved["inputs"])
    first = cp.tokenize_part.fn(corpus, recipe, 0, part, options)
    text.write_text("changed, but the part is recorded as finished\n")
    assert cp.tokenize_part.fn(corpus, recipe, 0, part, options) == first
