"""PHOC vectors against ones computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models.base import ConfigError
from models.data import Vocabulary
from models.phoc import PHOCConfig, PHOCEmbedding, PHOCEncoder, frequent_bigrams


def test_phoc_of_abc_matches_hand_computed():
    encoder = PHOCEncoder("abc", levels=(1, 2), bigrams=["ab"], bigram_levels=(2,))
    # level 1: a, b, c; level 2, left half: a and b (half of b's span [1/3, 2/3] is in it), right: b, c;
    # bigram "ab" spans [0, 2/3]: three quarters in the left half, a quarter in the right
    expected = [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0]
    assert encoder.dim == 11
    np.testing.assert_array_equal(encoder.encode("abc"), np.asarray(expected, np.float32))


def test_phoc_of_a_longer_word_and_characters_outside_the_alphabet():
    encoder = PHOCEncoder("abcd", levels=(2, 3))
    # "abdd?": n = 5, '?' sets nothing; level 2 [0, .5]: a, b, d(2: span [.4, .6] half in); [.5, 1]: d, d
    # level 3 [0, 1/3]: a, b (span [.2, .4]: .133/.2 = 2/3 in); [1/3, 2/3]: d (2); b? .4-.333=.067/.2 < .5
    vector = encoder.encode("ABDD?")
    level2 = vector[:8].reshape(2, 4)
    level3 = vector[8:].reshape(3, 4)
    np.testing.assert_array_equal(level2, [[1, 1, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(level3, [[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]])


def test_default_size_is_604():
    config = PHOCConfig()
    bigrams = [f"{a}{b}" for a in "abcdefgh" for b in "abcdefgh"][:50]
    encoder = PHOCEncoder(config.alphabet, config.levels, bigrams, config.bigram_levels)
    assert encoder.dim == 36 * 14 + 50 * 2 == 604


def test_frequent_bigrams_count_word_occurrences():
    vocab = Vocabulary(["the", "then", "xy"], np.asarray([10, 3, 20]))
    # th and he are both seen 13 times: ties go in bigram order
    assert frequent_bigrams(vocab, "abcdefghijklmnopqrstuvwxyz", 3) == ["xy", "he", "th"]


def test_unseen_words_get_vectors_unless_no_character_is_in_the_alphabet():
    encoder = PHOCEncoder("abc", levels=(1, 2))
    embedding = PHOCEmbedding(["ab", "ca"], encoder.encode_many(["ab", "ca"]), encoder)
    vectors, ok = embedding.build_unseen(["cab", "zzz"])
    assert ok.tolist() == [True, False]
    np.testing.assert_array_equal(vectors[0], encoder.encode("cab"))


def test_bad_levels_are_refused_with_their_name():
    with pytest.raises(ConfigError, match="levels"):
        PHOCConfig.from_overrides({"levels": "0,2"})
    assert PHOCConfig.from_overrides({"levels": "2,3"}).levels == (2, 3)
