"""Formula-safe CSV: no cell a spreadsheet would evaluate, and every string reads back exactly."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.evidence import csvsafe


@pytest.mark.parametrize(("text", "cell"), [
    ("=SUM(A1:A9)", "'=SUM(A1:A9)"), ("+1", "'+1"), ("-2", "'-2"), ("@cmd", "'@cmd"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("'quoted", "''quoted"), ("plain", "plain"), ("", ""), ("a=b", "a=b"),
])
def test_it_prefixes_a_cell_that_could_start_a_formula_with_one_quote(text, cell):
    assert csvsafe.neutralise(text) == cell
    assert csvsafe.restore(cell) == text


def test_it_strips_a_quote_only_when_it_guards_a_formula_character():
    assert csvsafe.restore("'abc") == "'abc"
    assert csvsafe.restore("'") == "'"
    assert csvsafe.restore("''=x") == "'=x"


@given(st.text())
def test_it_restores_every_string_it_neutralised(text):
    cell = csvsafe.neutralise(text)
    assert not cell or cell[0] not in "=+-@\t\r"
    assert csvsafe.restore(cell) == text


@given(st.lists(st.lists(st.text(), min_size=3, max_size=3), max_size=20))
def test_it_reads_back_every_row_it_wrote(rows):
    handle = io.StringIO(newline="")
    assert csvsafe.write_rows(handle, ["a", "=b", "c"], rows) == len(rows)
    handle.seek(0)
    read = list(csvsafe.read_rows(handle))
    assert read == [["a", "=b", "c"], *rows]


def test_it_writes_none_as_empty_and_objects_as_canonical_json():
    handle = io.StringIO(newline="")
    csvsafe.write_rows(handle, ["id", "details", "n"], [[None, {"b": 1, "a": "-x"}, -3]])
    assert handle.getvalue().splitlines()[1] == ',"{""a"":""-x"",""b"":1}",\'-3'
