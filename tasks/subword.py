"""build-text-assets, subword tokenizers: WordPiece (BERT), byte-level BPE (GPT-2), Unigram (T5).

    text/NAME/tokenizers/wordpiece/tokenizer/   tokenizer.json, tokenizer_config.json, special_tokens_map.json
    text/NAME/tokenizers/bpe/tokenizer/
    text/NAME/tokenizers/unigram/tokenizer/

Each is trained with the `tokenizers` library on the corpus's sentences (the normalized `text`
column, case kept) and saved so that transformers loads it offline:

    AutoTokenizer.from_pretrained("work/store/text/NAME/tokenizers/wordpiece/tokenizer")

Special tokens: [PAD] [UNK] [CLS] [SEP] [MASK] for WordPiece (ids 0-4, BERT's template [CLS] A [SEP]
B [SEP] with token types); <|endoftext|> for BPE (id 0: beginning, end, padding and unknown, as in
GPT-2); <pad> </s> <unk> (ids 0-2) and the sentinels <extra_id_0..N-1> at the end of the vocabulary,
<extra_id_0> last, for Unigram (T5 appends </s> to every sequence).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.parquet as pq
from prefect import task
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from storage import Dataset, Manifest, Recipe, code_version
from tasks.common import STORE_CACHE, InputError, run_logger
from tasks.corpus import summary

KIND = "subword-tokenizer"  # the manifest kind
KINDS = ("wordpiece", "bpe", "unigram")
BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
GPT_END = "<|endoftext|>"
T5_SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
FOLDER = "tokenizer"


@dataclass(frozen=True)
class SubwordOptions:
    """One tokenizer to train: its kind, size and the few choices each family makes."""

    kind: str  # wordpiece, bpe or unigram
    vocab_size: int  # before T5's sentinels, which come on top (as in T5: 32,000 + 100)
    lowercase: bool = True  # WordPiece only (BERT uncased); BPE and Unigram keep case, as GPT-2 and T5 do
    min_frequency: int = 2  # WordPiece and BPE: a merge must be seen this often
    max_sentences: int | None = None  # train on an even sample of at most this many sentences
    extra_ids: int = 100  # Unigram: T5's sentinels <extra_id_0> ... for span corruption
    model_max_length: int | None = None  # default: 512 (BERT, T5), 1024 (GPT-2)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"tokenizer kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.vocab_size < 300 and self.kind == "bpe":
            raise InputError(f"bpe vocab_size must be >= 300 (256 bytes + merges), got {self.vocab_size}")
        if self.vocab_size < 10:
            raise InputError(f"vocab_size must be >= 10, got {self.vocab_size}")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise InputError(f"max_sentences must be >= 1, got {self.max_sentences}")

    @property
    def max_length(self) -> int:
        return self.model_max_length or (1024 if self.kind == "bpe" else 512)


def build(options: SubwordOptions) -> tuple[Tokenizer, trainers.Trainer]:
    """An untrained pipeline (normalizer, pre-tokenizer, model, decoder) and its trainer."""
    if options.kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        # accents stay, unlike English uncased BERT: they tell words apart in Spanish, Latgalian, ...
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=options.lowercase, strip_accents=False)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=options.vocab_size,
            min_frequency=options.min_frequency,
            special_tokens=list(BERT_SPECIALS.values()),
            continuing_subword_prefix="##",
        )
    elif options.kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=options.vocab_size,
            min_frequency=options.min_frequency,
            special_tokens=[GPT_END],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        # T5's SentencePiece normalizer: NMT cleanup, NFKC, runs of spaces as one
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=options.vocab_size,
            special_tokens=list(T5_SPECIALS.values()),
            unk_token="<unk>",
            max_piece_length=16,
        )
    return tokenizer, trainer


def finish(tokenizer: Tokenizer, options: SubwordOptions) -> dict[str, Any]:
    """Add what training cannot: post-processing templates, T5's sentinels; the transformers config."""
    if options.kind == "wordpiece":
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        return {
            **BERT_SPECIALS,
            "do_lower_case": options.lowercase,
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        }
    if options.kind == "bpe":
        return {
            "bos_token": GPT_END,
            "eos_token": GPT_END,
            "unk_token": GPT_END,
            "pad_token": GPT_END,
            "add_prefix_space": False,
            "model_input_names": ["input_ids", "attention_mask"],
        }
    sentinels = [f"<extra_id_{i}>" for i in range(options.extra_ids)]
    tokenizer.add_special_tokens(sentinels[::-1])  # <extra_id_0> gets the last id, as in T5
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return {
        **T5_SPECIALS,
        "extra_ids": options.extra_ids,
        "additional_special_tokens": sentinels,
        "model_input_names": ["input_ids", "attention_mask"],
    }


def save(tokenizer: Tokenizer, config: dict[str, Any], options: SubwordOptions, folder: str) -> list[str]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json, as save_pretrained writes them."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=options.max_length, **config)
    fast.save_pretrained(folder)
    settings_path = os.path.join(folder, "tokenizer_config.json")
    with open(settings_path) as f:
        settings = json.load(f)
    # the generic class loads from tokenizer.json in transformers 4 and 5 alike
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(settings_path, "w") as f:
        json.dump(settings, f, indent=2, ensure_ascii=False)
    specials = {k: v for k, v in config.items() if k.endswith("_token") or k == "additional_special_tokens"}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(specials, f, indent=2, ensure_ascii=False)
    return sorted(os.listdir(folder))


def _sentences(corpus: Dataset, max_sentences: int | None):
    """The corpus's sentence texts in batches, every k-th one when a sample is asked for."""
    total = corpus.manifest().tables["sentences"]["rows"]
    stride = math.ceil(total / max_sentences) if max_sentences and total > max_sentences else 1
    row = 0
    for path in corpus.table_files("sentences"):
        for batch in pq.ParquetFile(path, filesystem=corpus.fs).iter_batches(
            batch_size=10_000, columns=["text"]
        ):
            texts = batch.column(0).to_pylist()
            first = (-row) % stride
            yield texts[first::stride]
            row += len(texts)


@task(name="train-tokenizer", cache_policy=STORE_CACHE, persist_result=True)
def train_tokenizer(
    dataset: Dataset, recipe: Recipe, corpus: Dataset, options: SubwordOptions
) -> dict[str, Any]:
    """Train one subword tokenizer on the corpus sentences and save it for AutoTokenizer."""
    if dataset.is_current(recipe):
        return summary(dataset)
    logger = run_logger()
    started = time.perf_counter()
    dataset.begin(recipe)
    rows = corpus.manifest().tables["sentences"]["rows"]
    used = min(rows, options.max_sentences or rows)
    tokenizer, trainer = build(options)
    logger.info(
        "%s: training %s (vocabulary %s) on %s of %s sentences",
        dataset.name,
        options.kind,
        f"{options.vocab_size:,}",
        f"{used:,}",
        f"{rows:,}",
    )
    tokenizer.train_from_iterator(_sentences(corpus, options.max_sentences), trainer=trainer, length=used)
    config = finish(tokenizer, options)
    train_seconds = time.perf_counter() - started

    # fertility: subword tokens per word on the first sentences, the figure that sets sequence lengths
    sample = next(_sentences(corpus, None), [])[:2_000]
    encoded = tokenizer.encode_batch(sample, add_special_tokens=False)
    words = sum(len(s.split()) for s in sample)
    pieces = sum(len(e.ids) for e in encoded)
    unknown_id = tokenizer.token_to_id(config.get("unk_token", ""))
    unknown = sum(e.ids.count(unknown_id) for e in encoded) if unknown_id is not None else 0
    with tempfile.TemporaryDirectory() as folder:
        files = save(tokenizer, config, options, folder)
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                dataset.write_bytes(f"{FOLDER}/{name}", f.read())
    counts = {"sentences": used, "vocabulary": tokenizer.get_vocab_size()}
    metrics = {
        "options": asdict(options),
        "files": [f"{FOLDER}/{n}" for n in files],
        "train_seconds": round(train_seconds, 3),
        "sentences_per_second": round(used / max(train_seconds, 1e-9), 1),
        "tokens_per_word": round(pieces / max(words, 1), 4),
        "unknown_rate": round(unknown / max(pieces, 1), 6),
    }
    dataset.commit(Manifest.from_recipe(recipe, counts=counts, metrics=metrics))
    logger.info(
        "%s: %s pieces in %.1f s, %.3f pieces per word",
        dataset.name,
        f"{counts['vocabulary']:,}",
        train_seconds,
        metrics["tokens_per_word"],
    )
    return summary(dataset)


def tokenizer_recipe(corpus: Dataset, options: SubwordOptions) -> Recipe:
    return Recipe(
        KIND, {corpus.name: corpus.manifest().fingerprint}, asdict(options), code_version("tasks.subword")
    )


def load_tokenizer(dataset: Dataset):
    """transformers' AutoTokenizer for a tokenizer dataset; remote stores are copied to a local folder first."""
    from transformers import AutoTokenizer

    dataset.manifest()  # refuses an unfinished dataset
    folder = dataset.file(FOLDER)
    if not dataset.store.is_local:
        local = tempfile.mkdtemp(prefix="embedpipe-tokenizer-")
        dataset.fs.get(folder + "/", local, recursive=True)
        folder = local
    return AutoTokenizer.from_pretrained(folder)
