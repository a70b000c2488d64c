import pytest

from kallm.errors import KallmError
from kallm.retrofitting.layers import parse_layer_spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("last:5", (25, 26, 27, 28, 29)),
        ("first:2", (0, 1)),
        ("3-5", (3, 4, 5)),
        ("-1", (29,)),
        ("-3..-1", (27, 28, 29)),
        ("0,2, 4", (0, 2, 4)),
        ("last:2,0", (0, 28, 29)),
        ("28-29,last:1", (28, 29)),
        ("all", tuple(range(30))),
    ],
)
def test_layer_specs_resolve(spec, expected):
    assert parse_layer_spec(spec, 30) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("last:31", "has 30 layers"),
        ("30", "has 30 layers"),
        ("-31", "has 30 layers"),
        ("5-3", "empty"),
        ("", "empty layer selection"),
        ("last:0", "positive count"),
        ("middle", "cannot read"),
        ("1,,2", "empty item"),
    ],
)
def test_bad_layer_specs_say_what_is_wrong(spec, message):
    with pytest.raises(KallmError, match=message):
        parse_layer_spec(spec, 30)
