"""The one key=value parser of the analysis commands."""

from __future__ import annotations

import pytest

from poc59.core.cli import parse_key_values

KEYS = {"n": int, "level": float, "name": str, "pictures": bool, "runs": list}


def test_values_are_converted_by_type():
    got = parse_key_values(["n=3", "+level=0.9", "name=a=b", "pictures=No", "runs=[x,y]"], KEYS, "usage")
    assert got == {"n": 3, "level": 0.9, "name": "a=b", "pictures": False, "runs": ["x", "y"]}
    assert parse_key_values(["runs=a,b,c"], KEYS, "usage")["runs"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["n=three"], "n=three: expected an integer"),
        (["pictures=maybe"], "pictures=maybe: expected true or false"),
        (["colour=red"], "unknown argument 'colour=red'"),
        (["n"], "unknown argument 'n'"),
        (["--help"], "usage: demo"),
        ([], "usage: demo"),
    ],
)
def test_bad_arguments_name_the_key_and_show_usage(argv, message):
    class DemoError(Exception):
        pass

    with pytest.raises(DemoError, match=message) as info:
        parse_key_values(argv, KEYS, "usage: demo", DemoError)
    assert "usage: demo" in str(info.value)
