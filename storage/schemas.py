"""The Parquet schemas of the datasets embedpipe writes. Each field's comment is its documentation."""

from __future__ import annotations

import pyarrow as pa

# --- ingest-wikipedia ---------------------------------------------------------------------------

LINK = pa.struct([
    pa.field("target", pa.string()),  # the linked page title, as written (first letter not normalized)
    pa.field("anchor", pa.string()),  # the text shown, which is what stays in `text`
])

IMAGE = pa.struct([
    pa.field("file", pa.string()),  # file name without namespace, e.g. "Eiffel Tower.jpg"
    pa.field("caption", pa.string()),  # plain-text caption ("" when the reference has none)
    pa.field("url", pa.string()),  # Wikimedia Commons URL of the original file
])

SECTION = pa.struct([
    pa.field("title", pa.string()),  # "" for the lead section
    pa.field("level", pa.int8()),  # 1 for the lead, 2 for == h2 ==, up to 6
    pa.field("start", pa.int32()),  # character offsets of the section's body in `text`, [start, end)
    pa.field("end", pa.int32()),
])

ARTICLES = pa.schema([
    pa.field("page_id", pa.int64(), nullable=False),
    pa.field("revision_id", pa.int64()),
    pa.field("namespace", pa.int32(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("timestamp", pa.timestamp("s", tz="UTC")),  # of the revision
    pa.field("wiki", pa.string()),  # database name from siteinfo (enwiki, ltgwiki) or the file's stem
    pa.field("text", pa.string(), nullable=False),  # plain text, sections separated by blank lines
    pa.field("sections", pa.list_(SECTION)),
    pa.field("links", pa.list_(LINK)),
    pa.field("categories", pa.list_(pa.string())),  # category names without the namespace prefix
    pa.field("images", pa.list_(IMAGE)),
    pa.field("is_disambiguation", pa.bool_()),
])

REDIRECTS = pa.schema([
    pa.field("page_id", pa.int64(), nullable=False),
    pa.field("namespace", pa.int32(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("target", pa.string(), nullable=False),  # the title redirected to, with #fragment if any
    pa.field("wiki", pa.string()),
])

REJECTS = pa.schema([
    pa.field("page_id", pa.int64()),  # null when the page had no readable id
    pa.field("title", pa.string()),
    pa.field("reason", pa.string(), nullable=False),  # short code: missing_text, parse_error, ...
    pa.field("detail", pa.string()),  # the error message
    pa.field("chunk", pa.int32()),
])

# --- build-text-assets -------------------------------------------------------------------------

VOCABULARY = pa.schema([
    pa.field("id", pa.int32(), nullable=False),  # 0 is the most frequent token
    pa.field("token", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
])

TOKEN_SHARDS = pa.schema([
    pa.field("article_id", pa.int64(), nullable=False),  # page id, or line number for plain text
    pa.field("sentence", pa.int32(), nullable=False),  # index of the sentence in its article
    pa.field("tokens", pa.list_(pa.int32()), nullable=False),  # vocabulary ids, in-vocabulary only
])

COOCCURRENCE = pa.schema([
    pa.field("i", pa.int32(), nullable=False),  # word id (vocabulary)
    pa.field("j", pa.int32(), nullable=False),  # context word id
    pa.field("x", pa.float32(), nullable=False),  # weighted count
])

TOPICS = pa.schema([
    pa.field("article_id", pa.int64(), nullable=False),
    pa.field("topics", pa.list_(pa.float32()), nullable=False),  # K probabilities summing to 1
])

TOPIC_WORDS = pa.schema([
    pa.field("topic", pa.int32(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("token", pa.string(), nullable=False),
    pa.field("weight", pa.float32(), nullable=False),  # p(word | topic)
])
