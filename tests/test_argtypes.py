import argparse

import pytest

from vdiffdeblur.argtypes import optional, parse_bool


@pytest.mark.parametrize("text,value", [("true", True), ("Yes", True), ("1", True), ("on", True),
                                        ("false", False), ("NO", False), ("0", False), ("off", False)])
def test_parse_bool_reads_the_usual_spellings(text, value):
    assert parse_bool(text) is value


def test_parse_bool_rejects_anything_else_with_a_message():
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false, got 'maybe'"):
        parse_bool("maybe")


def test_optional_reads_none_and_parses_the_rest():
    kind = optional(int)
    assert kind("none") is None and kind("NULL") is None and kind("") is None
    assert kind("12") == 12 and kind.__name__ == "int"
    with pytest.raises(ValueError):
        kind("twelve")
