"""Continual-learning streams: comma lists, JSON stream files, budgets and every refusal."""
from __future__ import annotations

import json

import pytest

from sequences import streams
from sequences.streams import Experience
from sequences.errors import DataError


def write(tmp_path, doc, name="stream.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_comma_list_names_and_repeats():
    got = streams.parse("stdlib, bouncing-mnist,ptb-char:/data/ptb/,corpora/tiny.txt,stdlib,stdlib", tokens=1000)
    assert [e.name for e in got] == ["stdlib", "bouncing-mnist", "ptb-char:ptb", "tiny.txt", "stdlib#2", "stdlib#3"]
    assert [e.data for e in got] == ["stdlib", "bouncing-mnist", "ptb-char:/data/ptb/", "corpora/tiny.txt",
                                     "stdlib", "stdlib"]
    assert all(e.tokens == 1000 and e.minutes is None for e in got)
    one = streams.parse("stdlib", minutes=0.5)
    assert one == [Experience("stdlib", "stdlib", minutes=0.5)]


def test_json_list_and_dict_forms(tmp_path):
    items = [{"data": "stdlib", "tokens": 500},
             {"data": "bouncing-mnist", "name": "digits"},
             {"data": "stdlib", "minutes": 2}]
    for doc in (items, {"experiences": items}):
        got = streams.parse(write(tmp_path, doc), minutes=1.5)
        assert got == [Experience("stdlib", "stdlib", tokens=500),       # its own budget wins
                       Experience("digits", "bouncing-mnist", minutes=1.5),  # takes the command-line one
                       Experience("stdlib#2", "stdlib", minutes=2)]


def test_json_without_command_line_budget_and_1e6_tokens(tmp_path):
    got = streams.parse(write(tmp_path, '[{"data": "a.txt", "tokens": 1e6}, {"data": "b.txt", "minutes": 1}]'))
    assert got[0].tokens == 1000000 and isinstance(got[0].tokens, int)
    assert [e.name for e in got] == ["a.txt", "b.txt"]


def test_auto_name_avoids_given_names(tmp_path):
    got = streams.parse(write(tmp_path, [{"data": "x", "name": "stdlib"}, {"data": "stdlib"}]), tokens=10)
    assert [e.name for e in got] == ["stdlib", "stdlib#2"]


def test_to_json_round_trips(tmp_path):
    exps = streams.parse("stdlib,stdlib,mnist-seq", minutes=3)
    exps[1] = Experience("stdlib#2", "stdlib", tokens=7)
    rows = streams.to_json(exps)
    assert rows[1] == {"name": "stdlib#2", "data": "stdlib", "tokens": 7}
    assert rows[0] == {"name": "stdlib", "data": "stdlib", "minutes": 3}
    assert streams.parse(write(tmp_path, {"experiences": rows})) == exps


@pytest.mark.parametrize("spec, minutes, tokens, words", [
    ("stdlib", None, None, "give one of minutes or tokens"),
    ("stdlib", 1.0, 10, "only one of minutes or tokens"),
    ("stdlib", 0, None, "minutes must be positive"),
    ("stdlib", None, -5, "tokens must be positive"),
    ("stdlib", None, 2.5, "tokens must be a whole number"),
    ("", 1.0, None, "the stream is empty"),
    ("stdlib,,mnist", 1.0, None, "experience 1 has an empty data spec"),
])
def test_comma_list_errors(spec, minutes, tokens, words):
    with pytest.raises(DataError) as err:
        streams.parse(spec, minutes=minutes, tokens=tokens)
    assert words in str(err.value)


@pytest.mark.parametrize("doc, words", [
    ([], "the stream is empty"),
    ({"experiences": []}, "the stream is empty"),
    ({"stream": []}, "only the key \"experiences\", not 'stream'"),
    ({"experiences": [], "seed": 1}, "not 'seed'"),
    (7, "holds a list of experiences"),
    ([{"data": "a", "tokens": 5}, "b"], "experience 1: must be an object"),
    ([{"data": "a", "tokens": 5, "epochs": 2}], "experience 0: unknown key(s) 'epochs'"),
    ([{"tokens": 5}], "experience 0: needs \"data\""),
    ([{"data": "", "tokens": 5}], "experience 0: needs \"data\""),
    ([{"data": 3, "tokens": 5}], "experience 0: needs \"data\""),
    ([{"data": "a", "tokens": 5}, {"data": "b", "tokens": 5, "minutes": 1}],
     "experience 1: give only one of \"minutes\" or \"tokens\""),
    ([{"data": "a", "minutes": 0}], "experience 0: minutes must be positive"),
    ([{"data": "a", "minutes": "2"}], "experience 0: minutes must be a number"),
    ([{"data": "a", "tokens": -1}], "experience 0: tokens must be positive"),
    ([{"data": "a", "tokens": True}], "experience 0: tokens must be a whole number"),
    ([{"data": "a"}], "experience 0: has no budget"),
    ([{"data": "a", "name": ""}], "experience 0: \"name\" must be a non-empty string"),
    ([{"data": "a", "name": "x", "tokens": 1}, {"data": "b", "name": "x", "tokens": 1}],
     "experience 1: the name 'x' is already used by experience 0"),
])
def test_json_errors_name_file_and_index(tmp_path, doc, words):
    path = write(tmp_path, doc)
    with pytest.raises(DataError) as err:
        streams.parse(path)
    assert words in str(err.value)
    assert str(err.value).startswith(path + ":")


def test_file_errors(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(DataError, match="no such stream file"):
        streams.parse(missing, tokens=5)
    bad = write(tmp_path, '[{"data": "a",\n "tokens": }]', "bad.json")
    with pytest.raises(DataError) as err:
        streams.parse(bad)
    assert str(err.value).startswith(bad + ": invalid JSON at line 2")
    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(DataError, match="cannot read the stream file"):
        streams.parse(str(folder), tokens=5)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00[")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        streams.parse(str(binary), tokens=5)
    with pytest.raises(DataError, match="only one of minutes or tokens"):
        streams.parse(write(tmp_path, [{"data": "a", "tokens": 5}]), minutes=1, tokens=5)


def test_experience_checks_its_budget():
    with pytest.raises(DataError, match="exactly one of minutes or tokens"):
        Experience("a", "stdlib")
    with pytest.raises(DataError, match="exactly one of minutes or tokens"):
        Experience("a", "stdlib", minutes=1.0, tokens=3)
