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
# text/NAME/corpus: every document of the inputs, split into sentences and words (tasks/corpus.py)

CORPUS_ARTICLES = pa.schema([
    pa.field("doc", pa.int64(), nullable=False),  # unique in the corpus: part << 32 | position in part
    pa.field("source", pa.string(), nullable=False),  # the article's wiki (enwiki), or the text file's name
    pa.field("article_id", pa.int64(), nullable=False),  # page id, or first line number (1-based) for text
    pa.field("title", pa.string()),  # null for plain text
    pa.field("sentences", pa.int32(), nullable=False),  # rows in `sentences`; 0 for an empty document
    pa.field("words", pa.int32(), nullable=False),
])

CORPUS_SENTENCES = pa.schema([
    pa.field("doc", pa.int64(), nullable=False),
    pa.field("article_id", pa.int64(), nullable=False),
    pa.field("sentence", pa.int32(), nullable=False),  # index of the sentence in its document
    pa.field("text", pa.string(), nullable=False),  # Unicode-normalized sentence, case kept
    pa.field("words", pa.list_(pa.string()), nullable=False),  # word tokens, lowercased if asked, >= 1
])

WORD_COUNTS = pa.schema([
    pa.field("token", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),  # occurrences in one corpus part
])

# text/NAME/vocabulary, and a copy beside token shards and co-occurrence

VOCABULARY = pa.schema([
    pa.field("id", pa.int32(), nullable=False),  # 0 is the most frequent token; ties in token order
    pa.field("token", pa.string(), nullable=False),
    pa.field("count", pa.int64(), nullable=False),
])

# text/NAME/tokens: row k of tokens/part-P-F.parquet is row k of the corpus's sentences/part-P-F.parquet

TOKEN_SHARDS = pa.schema([
    pa.field("article_id", pa.int64(), nullable=False),  # page id, or line number for plain text
    pa.field("sentence", pa.int32(), nullable=False),  # index of the sentence in its article
    pa.field("tokens", pa.list_(pa.int32()), nullable=False),  # vocabulary ids, in-vocabulary only (may be [])
    pa.field("doc", pa.int64(), nullable=False),  # the corpus document (unique across sources)
])

# text/NAME/cooccurrence: hash partitions of non-zero pairs

COOCCURRENCE = pa.schema([
    pa.field("i", pa.int32(), nullable=False),  # word id (vocabulary)
    pa.field("j", pa.int32(), nullable=False),  # context word id
    pa.field("x", pa.float32(), nullable=False),  # weighted count
])

# text/NAME/topics: LDA targets for every corpus document

TOPICS = pa.schema([
    pa.field("article_id", pa.int64(), nullable=False),
    pa.field("topics", pa.list_(pa.float32()), nullable=False),  # K probabilities summing to 1
    pa.field("source", pa.string(), nullable=False),  # the wiki (enwiki) or text file: article ids are per source
])

TOPIC_WORDS = pa.schema([
    pa.field("topic", pa.int32(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("token", pa.string(), nullable=False),
    pa.field("weight", pa.float32(), nullable=False),  # p(word | topic)
])

LDA_VOCABULARY = pa.schema([
    pa.field("id", pa.int32(), nullable=False),  # column of the topic-word matrix
    pa.field("token", pa.string(), nullable=False),
    pa.field("vocabulary_id", pa.int32(), nullable=False),  # id in the corpus vocabulary
    pa.field("documents", pa.int64(), nullable=False),  # document frequency in the training corpus
])

# --- ingest-images -------------------------------------------------------------------------------

IMAGE_STATUS = pa.schema([
    pa.field("row", pa.int64(), nullable=False),  # position in the whole input, 0-based
    pa.field("source_row", pa.int64()),  # row of the input table, file number, or article row
    pa.field("page_id", pa.int64()),  # the article the image belongs to (Wikipedia sources), else null
    pa.field("url", pa.string()),
    pa.field("caption", pa.string()),
    # written, duplicate, bad_url, blocked_address, robots_disallowed, opted_out, http_NNN, timeout,
    # connection_error, dns_error, ssl_error, too_many_redirects, too_large, not_an_image,
    # corrupt_image, decompression_bomb, too_small, file_error, internal_error
    pa.field("outcome", pa.string(), nullable=False),
    pa.field("detail", pa.string()),  # why, in words, when not written
    pa.field("http_status", pa.int32()),  # of the last response, when there was one
    pa.field("key", pa.string()),  # the sample's key in the shards (written rows only)
    pa.field("shard", pa.int32()),  # the shard holding it (written rows only)
    pa.field("duplicate_of", pa.string()),  # key of the written sample with the same bytes (duplicates)
    pa.field("sha256", pa.string()),  # of the bytes as downloaded, hex
    pa.field("phash", pa.string()),  # 64-bit perceptual hash of the written image, hex
    pa.field("original_width", pa.int32()),  # as displayed (EXIF orientation applied), before resizing
    pa.field("original_height", pa.int32()),
    pa.field("width", pa.int32()),  # as written
    pa.field("height", pa.int32()),
    pa.field("download_bytes", pa.int64()),
])

IMAGE_SHARDS = pa.schema([
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("file", pa.string(), nullable=False),  # relative to the dataset folder: shards/shard-NNNNN.tar
    pa.field("samples", pa.int32(), nullable=False),  # samples_per_shard, except in the last shard
    pa.field("bytes", pa.int64(), nullable=False),
    pa.field("first_key", pa.string()),
    pa.field("last_key", pa.string()),
])

# --- evaluate ------------------------------------------------------------------------------------
# evaluations/RUN: word-embedding results of one run (tasks/evaluation.py)

WORD_ANALOGIES = pa.schema([
    pa.field("run", pa.string(), nullable=False),  # runs/NAME
    pa.field("set", pa.string(), nullable=False),  # the analogy file's stem, e.g. questions-words
    pa.field("section", pa.string(), nullable=False),  # capital-common-countries, ..., and "total"
    pa.field("questions", pa.int64(), nullable=False),
    pa.field("answered", pa.int64(), nullable=False),  # all four words in the vocabulary (gensim's count)
    pa.field("correct_add", pa.int64(), nullable=False),  # 3CosAdd
    pa.field("correct_mul", pa.int64(), nullable=False),  # 3CosMul
    pa.field("answered_built", pa.int64(), nullable=False),  # answered with a vector built for an unseen word
    pa.field("correct_add_built", pa.int64(), nullable=False),
    pa.field("correct_mul_built", pa.int64(), nullable=False),
    pa.field("unseen", pa.int64(), nullable=False),  # questions = answered + answered_built + unseen
    pa.field("accuracy_add", pa.float64()),  # correct_add / answered (NaN when none answered)
    pa.field("accuracy_mul", pa.float64()),
    pa.field("accuracy_add_all", pa.float64()),  # counting the built ones too
    pa.field("coverage", pa.float64()),  # (answered + answered_built) / questions
])

WORD_SIMILARITY = pa.schema([
    pa.field("run", pa.string(), nullable=False),
    pa.field("set", pa.string(), nullable=False),  # the pairs file's stem, e.g. wordsim353
    pa.field("pairs", pa.int64(), nullable=False),
    pa.field("answered", pa.int64(), nullable=False),  # both words in the vocabulary (gensim's count)
    pa.field("answered_built", pa.int64(), nullable=False),  # with a built vector for an unseen word
    pa.field("unseen", pa.int64(), nullable=False),  # pairs = answered + answered_built + unseen
    pa.field("spearman", pa.float64()),  # over the answered pairs; NaN when undefined
    pa.field("pearson", pa.float64()),
    pa.field("spearman_all", pa.float64()),  # over answered and built
    pa.field("coverage", pa.float64()),
])

# evaluations/RUN, contextual checks (tasks/contextual_evaluation.py): every run, static ones included

WORD_SENSES = pa.schema([
    pa.field("run", pa.string(), nullable=False),
    pa.field("word", pa.string(), nullable=False),  # a word with two senses
    pa.field("cosine_same_sense", pa.float64()),  # its vectors in two sentences of one sense (1 for static)
    pa.field("cosine_other_sense", pa.float64()),  # ... in a sentence of that sense and one of the other
    pa.field("seen", pa.bool_(), nullable=False),  # false when the model has no vector for the word
    pa.field("separated", pa.bool_(), nullable=False),  # cosine_same_sense > cosine_other_sense
])

# evaluations/RUN, a contextual model's own objective on the held-out articles (one row per metric)

HELDOUT_METRICS = pa.schema([
    pa.field("run", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),  # mlm_accuracy, nsp_accuracy, perplexity, span_accuracy, ...
    pa.field("value", pa.float64()),
])
