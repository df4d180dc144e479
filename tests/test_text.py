"""Text data: vocabularies, the lines and stream protocols, the PTB char reader, splits and bad files.

Expected values are worked out by hand from the small inputs written here (counts of scored
symbols, masks, split sizes), not taken from what the code returns.
"""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from sequences import stdlib_corpus, text
from sequences.vocab import Vocabulary
from sequences.errors import DataError


def write(path, content, binary=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if binary else path.write_text)(content)
    return path


# --------------------------------------------------------------------------- vocabularies

def test_char_vocabulary_round_trip_and_unknowns():
    v = Vocabulary.build("char", ["abca", "cab"])
    # counts: a 3, b 2, c 2 -> ids by decreasing count then symbol, after the unknown token
    assert v.symbols == ["\ufffd", "a", "b", "c"]
    assert v.counts == [0, 3, 2, 2]
    ids, unknown = v.encode("cabz!")
    assert ids.tolist() == [3, 1, 2, 0, 0] and unknown == 2
    assert v.decode(v.encode("abc")[0]) == "abc"
    again = Vocabulary.from_dict(v.to_dict())
    assert again == v and again.encode("cabz")[0].tolist() == [3, 1, 2, 0]
    # plain data only: lists of str and int
    d = v.to_dict()
    assert all(isinstance(s, str) for s in d["symbols"]) and all(isinstance(c, int) for c in d["counts"])


def test_word_vocabulary_counts_a_literal_unk_as_known():
    v = Vocabulary.build("word", [["the", "<unk>", "cat"], ["the", "dog"]])
    assert v.symbols[0] == "<unk>" and v.counts[0] == 1  # PTB's own <unk> is the unknown token
    ids, unknown = v.encode(["the", "<unk>", "zebra"])
    assert ids.tolist() == [v.index["the"], 0, 0] and unknown == 1
    assert v.decode(ids) == "the <unk> <unk>"


def test_vocabulary_rejects_bad_tables():
    with pytest.raises(ValueError):
        Vocabulary("char", ["a", "b"], [1, 1])  # no unknown token first
    with pytest.raises(ValueError):
        Vocabulary("char", ["\ufffd", "ab"], [0, 1])  # not a character


# --------------------------------------------------------------------------- protocols

LINES = ["abcd", "ab", "x", "", "abcdef", "ba"]  # lengths 4, 2, 1, 0, 6, 2


@pytest.fixture
def small(tmp_path):
    folder = tmp_path / "small"
    write(folder / "train.txt", "\n".join(LINES) + "\n")
    write(folder / "valid.txt", "abc\ncab\n")
    write(folder / "test.txt", "bad\nzz\n")
    return text.load(str(folder))


def test_lines_protocol_masks_and_scoring(small):
    v = small.vocabulary("lines")
    batches = small.batches("train", v, "lines", batch_size=2, seed=0)
    # sequences of 2+ symbols: lengths 4, 2, 6, 2 -> 14 symbols, 4 first symbols unscored
    assert batches.n_tokens == 14 and batches.n_scored == 10 and len(batches) == 2
    seen = []
    for batch in batches.epoch(0):
        assert batch.reset
        T, B = batch.tokens.shape
        lengths = batch.mask.sum(0).long().tolist()
        assert T == max(lengths)
        for b, n in enumerate(lengths):
            assert batch.mask[:n, b].eq(1).all() and batch.mask[n:, b].eq(0).all()
            assert batch.tokens[n:, b].eq(0).all()
            assert not batch.score[0, b] and batch.score[1:n, b].all() and not batch.score[n:, b].any()
            seen.append(v.decode(batch.tokens[:n, b]))
    assert sorted(seen) == sorted(["abcd", "ab", "abcdef", "ba"])
    # length bucketing in evaluation order: sorted by length, so [2, 2] then [4, 6]
    eval_lengths = [b.mask.sum(0).long().tolist() for b in batches.epoch(None)]
    assert eval_lengths == [[2, 2], [4, 6]]
    # a fixed seed and epoch give the same order; resuming skips batches
    again = [b.tokens for b in batches.epoch(0)]
    assert all(torch.equal(a, b.tokens) for a, b in zip(again, batches.epoch(0)))
    assert torch.equal(next(iter(batches.epoch(0, start=1))).tokens, again[1])


def test_stream_protocol_masks_and_scoring(small):
    v = small.vocabulary("stream")
    assert "\n" in v.index  # lines are joined by the end-of-line symbol
    stream = "".join(line + "\n" for line in LINES)
    N = len(stream)  # 4+2+1+0+6+2 symbols and 6 newlines = 21
    assert N == 21
    batches = small.batches("train", v, "stream", batch_size=4, seq_len=2)
    # 4 rows of ceil(21/4) = 6 symbols: 24 slots, the last row holds 21 - 18 = 3 real symbols
    assert batches.tokens.shape == (6, 4) and batches.n_tokens == 21
    assert batches.mask.sum(0).tolist() == [6, 6, 6, 3]
    assert batches.n_scored == 21 - 4  # all but the first symbol of each row
    segs = list(batches.epoch(0))
    assert len(segs) == 3 and [s.reset for s in segs] == [True, False, False]
    assert sum(s.n_scored for s in segs) == 17
    rows = torch.cat([s.tokens for s in segs]).T.reshape(-1)[:N]
    assert v.decode(rows) == stream  # row b holds symbols b*6 .. b*6+5 of the stream


def test_batch_larger_than_the_data_is_refused(small):
    v = small.vocabulary("lines")
    with pytest.raises(DataError, match="larger than the data"):
        small.batches("train", v, "lines", batch_size=5)  # 4 usable sequences
    with pytest.raises(DataError, match="larger than the data"):
        small.batches("train", small.vocabulary("stream"), "stream", batch_size=11, seq_len=5)  # 21 symbols
    # evaluation clamps the rows instead
    assert small.batches("valid", v, "lines", batch_size=50, clamp=True).batch_size == 2


def test_unknown_symbols_at_evaluation_are_counted(small):
    v = small.vocabulary("lines")  # a b c d e f ("x" is a 1-symbol line: not a sequence)
    batches = small.batches("test", v, "lines", batch_size=2)
    assert batches.unknown == 2 + 0  # "bad" is known, "zz" has two unknown z
    assert batches.ids.max() < len(v)  # an unknown symbol stays inside the vocabulary


# --------------------------------------------------------------------------- PTB and files

PTB_CHAR = {  # the real format: spaces between characters, '_' for a space, leading space from
    # the second line on, a trailing space before each newline and a final "\n "
    "train": "a e r _ b a n k \n < u n k > _ c o \n N _ $ \n ",
    "valid": "c o n s _ N \n t w o \n ",
    "test": "n o _ i t \n ",
}


def test_ptb_char_reader_handles_the_format_quirks(tmp_path):
    for split, content in PTB_CHAR.items():
        write(tmp_path / f"ptb.char.{split}.txt", content)
        write(tmp_path / f"ptb.{split}.txt", " a b \n")  # the word files beside them
    corpus = text.load(f"ptb-char:{tmp_path}")
    assert corpus.level == "char"
    assert corpus.lines["train"] == ["aer_bank", "<unk>_co", "N_$"]  # no blank last line
    assert corpus.lines["valid"] == ["cons_N", "two"]
    v = corpus.vocabulary("lines")
    assert set(v.symbols[1:]) == set("aer_bnk<u>coN$") and " " not in v.index and "\n" not in v.index
    batches = corpus.batches("train", v, "lines", batch_size=3)
    assert batches.n_tokens == 8 + 8 + 3 and batches.n_scored == 19 - 3
    # the same folder read as a plain folder is ambiguous (two train files)
    with pytest.raises(DataError, match="several train files.*ptb-char"):
        text.load(str(tmp_path))
    word = text.load(f"ptb-word:{tmp_path}")
    assert word.level == "word" and word.lines["train"] == [["a", "b"]]
    assert word.sequences("train", "stream") == [["a", "b", "<eos>"]]


def test_ptb_char_reader_refuses_other_files(tmp_path):
    for split in ("train", "valid", "test"):
        write(tmp_path / f"ptb.char.{split}.txt", "hello world\n")
    with pytest.raises(DataError, match="not one character"):
        text.load(f"ptb-char:{tmp_path}")
    with pytest.raises(DataError, match="needs its folder"):
        text.load("ptb-char")
    with pytest.raises(DataError, match="is char-level data, not word-level"):
        text.load(f"ptb-char:{tmp_path}", level="word")


def test_single_file_split_90_5_5(tmp_path):
    lines = [f"line {i}" for i in range(40)]
    path = write(tmp_path / "corpus.txt", "\n".join(lines) + "\n")
    corpus = text.load(str(path))
    assert corpus.lines["train"] == lines[:36] and corpus.lines["valid"] == lines[36:38]
    assert corpus.lines["test"] == lines[38:]
    words = text.load(str(path), level="word")
    assert words.lines["train"][3] == ["line", "3"]
    with pytest.raises(DataError, match="too few to split"):
        text.load(str(write(tmp_path / "short.txt", "a\nb\nc\n")))


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        text.load(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="is empty"):
        text.load(str(write(tmp_path / "empty.txt", "")))
    bad = write(tmp_path / "bad.txt", b"good line\n\xff\xfe rest\n", binary=True)
    with pytest.raises(DataError, match=r"undecodable bytes at offset 10 \(byte 0xff\)"):
        text.load(str(bad))
    folder = tmp_path / "nosplits"
    write(folder / "train.txt", "abc\n")
    write(folder / "notes.txt", "abc\n")
    with pytest.raises(DataError, match="has no valid file"):
        text.load(str(folder))
    with pytest.raises(DataError, match="unknown level"):
        text.load("stdlib", level="byte")


def test_hub_name_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="hf:no_such_dataset_xyz.*(cannot be reached|offline|Offline)"):
        text.load("hf:no_such_dataset_xyz")


# --------------------------------------------------------------------------- embedded corpus

def test_stdlib_corpus_pieces(tmp_path):
    src = write(tmp_path / "mod.py", '"""Module doc."""\n\nclass A:\n    """Class doc.\n\n    More."""\n\n'
                                     'def f():\n    """Function doc."""\n\ndef g():\n    pass\n')
    assert stdlib_corpus.docstrings(src) == ["Module doc.", "Class doc.\n\nMore.", "Function doc."]
    assert stdlib_corpus.docstrings(write(tmp_path / "broken.py", "def (:\n")) == []
    docs = [f"doc {i} " + "x" * (i % 7) for i in range(100)]
    parts = stdlib_corpus.split_documents(docs)
    assert sorted(sum(parts.values(), [])) == sorted(docs)  # a partition into whole documents
    total = sum(map(len, docs))
    share = {k: sum(map(len, v)) / total for k, v in parts.items()}
    assert abs(share["train"] - 0.90) < 0.02 and abs(share["valid"] - 0.05) < 0.02
    assert parts == stdlib_corpus.split_documents(list(reversed(docs)))  # independent of input order


@pytest.mark.slow
def test_stdlib_corpus_is_a_few_megabytes_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("TNCN_CACHE", str(tmp_path))
    folder = stdlib_corpus.directory()
    sizes = {s: (folder / f"{s}.txt").stat().st_size for s in ("train", "valid", "test")}
    assert 1_000_000 < sum(sizes.values()) < 10_000_000
    assert abs(sizes["train"] / sum(sizes.values()) - 0.9) < 0.02
    first = (folder / "valid.txt").read_text()
    shutil.rmtree(folder)  # rebuild into the same folder
    assert (stdlib_corpus.directory() / "valid.txt").read_text() == first
    corpus = text.load("stdlib")
    v = corpus.vocabulary("stream")
    h = -sum(c / sum(v.counts) * math.log2(c / sum(v.counts)) for c in v.counts if c)
    assert 4.0 < h < 5.5


def test_real_ptb_char_files():
    """The shared copy of Mikolov's files: sentence counts and the 49 symbols of the data README,
    the 4.30-bit unigram entropy of the README's PTB tables."""
    from conftest import shared_path
    from tncn.metrics import unigram_entropy

    root = shared_path("data", "ptb")
    corpus = text.load(f"ptb-char:{root}")
    assert [len(corpus.lines[s]) for s in ("train", "valid", "test")] == [42068, 3370, 3761]
    v = corpus.vocabulary("lines")
    assert len(v) == 49 + 1 and "_" in v.index and " " not in v.index
    assert round(unigram_entropy(v.counts), 2) == 4.30
    assert corpus.batches("test", v, "lines", 50).unknown == 0
