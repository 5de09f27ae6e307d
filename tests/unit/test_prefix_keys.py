"""The prefix keys of text: the C ones (cluster/common/_prefix_keys.c) are the Python statement's, value for value.

Replicas publish these keys and every router computes them; a router whose keys differ from a replica's
would never find what that replica holds.
"""

from __future__ import annotations

import random
import zlib

import pytest

from cluster.common import prefix_hash
from cluster.common.prefix_hash import _text_keys_python, text_keys


def test_the_install_built_the_native_prefix_keys():
    assert prefix_hash._text_keys_c is not None
    assert text_keys is not _text_keys_python


def test_a_key_is_the_block_index_and_the_crc_of_the_whole_prefix_up_to_it():
    text = "abcdefgh" * 5 + "xyz"  # 43 bytes: five full 8-byte blocks, a partial tail without a key
    keys = text_keys(text, 8, 128)
    assert keys == [i << 32 | zlib.crc32(text[: (i + 1) * 8].encode()) for i in range(5)]


@pytest.mark.parametrize("seed", range(5))
def test_the_c_keys_equal_the_python_keys_on_random_text_of_any_script(seed: int):
    rng = random.Random(seed)
    alphabet = 'ab yz\n\t{}"é€ßж漢😀'  # 1- to 4-byte UTF-8, so blocks cut characters anywhere
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 3000)))
        block, most = rng.choice([1, 7, 8, 64, 128, 129, 4096]), rng.choice([0, 1, 3, 128, 10_000])
        assert prefix_hash._text_keys_c(text, block, most) == _text_keys_python(text, block, most), (block, most)


def test_both_take_the_same_defaults_and_keywords():
    text = "é" * 1000
    assert prefix_hash._text_keys_c(text) == _text_keys_python(text)
    assert prefix_hash._text_keys_c(text, max_blocks=3, block_bytes=64) == _text_keys_python(text, 64, 3)


def test_keys_stop_at_max_blocks():
    assert len(text_keys("x" * 10_000, 128, 16)) == 16
    assert text_keys("x" * 10_000, 128, 0) == []


def test_text_with_a_lone_surrogate_raises_in_both_as_str_encode_does():
    for keys in (prefix_hash._text_keys_c, _text_keys_python):
        with pytest.raises(UnicodeEncodeError):
            keys("abc\ud800" * 64, 8, 128)
