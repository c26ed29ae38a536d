"""Cleaning wikitext: plain text with sections, and what is extracted beside it."""

from __future__ import annotations

import hashlib
import re

import pytest

from tasks.wikitext import Cleaner, commons_url, cut_templates_and_tables
from tasks.wikixml import RawPage, SiteInfo, decompressed_blocks, iter_pages, read_siteinfo

ENGLISH = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MARKUP_LEFT = (
    "{{",
    "}}",
    "{|",
    "|}",
    "<ref",
    "</ref",
    "<!--",
    "__NOTOC__",
    "[[File:",
    "[[Image:",
    "[[Category:",
)


def pages_of(path):
    with open(path, "rb") as f:
        info, _ = read_siteinfo(decompressed_blocks(f, str(path)))
    with open(path, "rb") as f:
        pages = [
            p for p in iter_pages(decompressed_blocks(f, str(path)), str(path)) if isinstance(p, RawPage)
        ]
    return info, [p for p in pages if p.namespace == 0 and not p.redirect]


@pytest.fixture(scope="module")
def english(shared_data):
    info, pages = pages_of(shared_data / "wikipedia_xml" / ENGLISH)
    cleaner = Cleaner(info)
    return {p.title: (p, cleaner.clean(p.text)) for p in pages}


def test_english_sample_is_plain_text(english):
    assert len(english) == 106
    for title, (_, clean) in english.items():
        for left in MARKUP_LEFT:
            assert left not in clean.text, (title, left)
        assert "[[" not in clean.text and "]]" not in clean.text, title


# articles (namespace 0, not redirects) in each sample, as ../shared/data/README.md lists them
ARTICLES = {
    ENGLISH: 106,
    "enwiki-table-markup.xml.bz2": 5,
    "zulko-wiki_dump_extractor-tiny_dump-enwiki-export-0.11.xml.bz2": 6,
    "wikipedia2vec-enwiki-pages-articles-sample.xml.bz2": 2,
    "dumpster-dive-ltgwiki-smallwiki-pages-articles.xml.bz2": 903,
}
TABLE_ROW = re.compile(r"^[ \t]*(?:\|[-+}]|!)|\|\|", re.MULTILINE)


@pytest.mark.parametrize("name", sorted(ARTICLES))
def test_every_sample_cleans_to_plain_text(shared_data, name):
    info, pages = pages_of(shared_data / "wikipedia_xml" / name)
    assert len(pages) == ARTICLES[name]
    cleaner = Cleaner(info)
    for page in pages:
        clean = cleaner.clean(page.text)
        for left in ("{{", "}}", "[[", "<ref", "</ref", "{|", "|}", "<!--"):
            assert left not in clean.text, (page.title, left)
        assert not TABLE_ROW.search(clean.text), page.title
        if "]]" in clean.text:  # only where the page itself closes a link it never opened
            assert page.text.count("[[") < page.text.count("]]"), page.title
        for section in clean.sections:
            assert clean.text[section["start"] : section["end"]].startswith(section["title"])
        for image in clean.images:
            assert image["file"] and "[[" not in image["caption"] and "{{" not in image["caption"]


def test_a_page_of_several_megabytes_cleans_whole(english):
    raw, one = english["Anarchism"]
    copies = 5_000_000 // len(raw.text) + 1
    big = "\n".join(raw.text for _ in range(copies))  # several MB: longer than any enwiki article
    assert len(big) > 5_000_000
    clean = Cleaner(SiteInfo()).clean(big)
    assert len(clean.text) > (copies - 1) * len(one.text)
    assert "{{" not in clean.text and "[[" not in clean.text and "<ref" not in clean.text
    assert set(clean.categories) == set(one.categories) and len(clean.images) == len(one.images)


def test_anarchism_text_sections_links_categories_images(english):
    raw, clean = english["Anarchism"]
    assert clean.text.startswith("Anarchism is a political philosophy that advocates self-governed societies")
    titles = [s["title"] for s in clean.sections]
    assert titles[0] == "" and "Etymology and terminology" in titles and "References" not in titles[:2]
    for section in clean.sections:  # offsets cut the text at the section's title
        piece = clean.text[section["start"] : section["end"]]
        assert piece.startswith(section["title"])
    assert {"Political culture", "Anarchism"} <= set(clean.categories)
    targets = {link["target"] for link in clean.links}
    assert "Political philosophy" in targets or "political philosophy" in targets
    assert len(clean.images) >= 10
    for image in clean.images:
        assert image["url"].startswith("https://upload.wikimedia.org/wikipedia/commons/")
    assert any(image["caption"] for image in clean.images)


def test_disambiguation_pages_are_flagged(english):
    flagged = sorted(title for title, (_, clean) in english.items() if clean.is_disambiguation)
    assert len(flagged) == 8
    assert "Anarchism" not in flagged


CLEANER = Cleaner(SiteInfo())


def test_link_anchor_text_is_kept_and_targets_recorded():
    page = CLEANER.clean("The [[Paris|French capital]] and [[Berlin]] and [[:Category:Cities|all cities]].")
    assert page.text == "The French capital and Berlin and all cities."
    assert [link["target"] for link in page.links] == ["Paris", "Berlin", "Category:Cities"]
    assert page.links[0]["anchor"] == "French capital"


def test_templates_references_tables_comments_magic_words_are_removed():
    text = (
        "__NOTOC__{{Infobox person|name=X|image=Portrait of X.jpg|caption=X in [[1900]]}}"
        "'''X''' was a poet.<ref>{{cite book|title=Y}}</ref> She wrote<!-- hidden --> books.<ref name=a/>\n"
        "{| class=wikitable\n|-\n| a || b\n|}\n"
        "== Works ==\n* ''First'' (1901)\n"
        "[[File:Signature of X.png|thumb|left|200px|Her [[signature]]]]\n"
        "[[Category:Poets]]\n[[de:X]]"
    )
    page = CLEANER.clean(text)
    assert page.text == "X was a poet. She wrote books.\n\nWorks\nFirst (1901)"
    assert page.categories == ["Poets"]
    assert [s["title"] for s in page.sections] == ["", "Works"]
    assert page.images == [
        {"file": "Portrait of X.jpg", "caption": "X in 1900", "url": commons_url("Portrait of X.jpg")},
        {"file": "Signature of X.png", "caption": "Her signature", "url": commons_url("Signature of X.png")},
    ]


def test_gallery_images_and_localized_file_namespace():
    info = SiteInfo(dbname="ltgwiki", namespaces={6: "Fails", 14: "Kategoreja"})
    cleaner = Cleaner(info)
    page = cleaner.clean(
        "Teksts [[Fails:Rēzekne.jpg|thumb|Rēzekne pilsāta]].\n<gallery>\nFails:A.png|Pyrmais\nB.jpg\n</gallery>\n"
        "[[Kategoreja:Latgola]]"
    )
    assert page.text == "Teksts."
    assert [(i["file"], i["caption"]) for i in page.images] == [
        ("Rēzekne.jpg", "Rēzekne pilsāta"),
        ("A.png", "Pyrmais"),
        ("B.jpg", ""),
    ]
    assert page.categories == ["Latgola"]


def test_commons_url_follows_the_md5_layout():
    name = "Example_image.jpg"
    digest = hashlib.md5(name.encode()).hexdigest()
    assert commons_url("example image.jpg") == (
        f"https://upload.wikimedia.org/wikipedia/commons/{digest[0]}/{digest[:2]}/Example_image.jpg"
    )


def test_unbalanced_brackets_keep_the_text():
    kept, removed = cut_templates_and_tables("a {{b|c}} d {{ e f")
    assert removed == ["{{b|c}}"]
    assert "a " in kept and " d " in kept and "e f" in kept


def test_table_markup_sample_keeps_prose_only(shared_data):
    info, pages = pages_of(shared_data / "wikipedia_xml" / "enwiki-table-markup.xml.bz2")
    cleaner = Cleaner(info)
    assert len(pages) == 5
    for page in pages:
        clean = cleaner.clean(page.text)
        assert "{|" not in clean.text and "|-" not in clean.text and "||" not in clean.text, page.title


def test_latgalian_sample_cleans_with_local_names(shared_data):
    info, pages = pages_of(
        shared_data / "wikipedia_xml" / "dumpster-dive-ltgwiki-smallwiki-pages-articles.xml.bz2"
    )
    cleaner = Cleaner(info)
    cleaned = [cleaner.clean(p.text) for p in pages]
    assert sum(bool(c.text) for c in cleaned) > 800
    assert not any("[[Kategoreja:" in c.text or "[[Fails:" in c.text for c in cleaned)
    assert sum(len(c.categories) for c in cleaned) > 500
