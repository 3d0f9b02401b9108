import numpy as np
import pytest

from shiftpq.levels import level_set


def test_4bit_weight_levels_exact():
    s = level_set(4, signed=True)
    assert s.kind == "apot"
    assert s.ints == (0, 1, 2, 3, 4, 6, 8, 10)
    assert s.denom == 10


def test_4bit_activation_levels_exact():
    s = level_set(4, signed=False)
    assert s.ints == (0, 1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 32, 33, 36, 48)
    assert s.denom == 48


@pytest.mark.parametrize("bits,signed,expected", [
    (3, True, (0, 1, 2, 4)),  # {0, .25, .5, 1}
    (2, False, (0, 1, 2, 4)),
    (3, False, (0, 1, 2, 3, 4, 6, 8, 10)),
    (2, True, (0, 1)),
])
def test_other_apot_sets(bits, signed, expected):
    assert level_set(bits, signed).ints == expected


def test_5bit_apot_matches_reference_construction():
    # reference build_power_value(B=5): a={0,1/2,1/8,1/64}, b={0,1/4,1/16,1/128}, c={0,1/32}, / max
    a, b, c = [0, 1 / 2, 1 / 8, 1 / 64], [0, 1 / 4, 1 / 16, 1 / 128], [0, 1 / 32]
    ref = sorted({x + y + z for x in a for y in b for z in c})
    ref = np.array(ref) / max(ref)
    s = level_set(5, signed=False)
    assert len(s.ints) == 32
    np.testing.assert_array_equal(s.values, ref)


@pytest.mark.parametrize("bits,signed", [(2, False), (3, False), (4, False), (5, False), (8, False),
                                         (2, True), (3, True), (4, True), (5, True), (8, True)])
def test_levels_are_sums_of_their_shift_terms(bits, signed):
    s = level_set(bits, signed)
    assert s.ints[0] == 0 and list(s.ints) == sorted(set(s.ints))
    for v, t in zip(s.ints, s.terms):
        assert v == sum(1 << k for k in t)


def test_4bit_products_need_at_most_four_shifts():
    w, a = level_set(4, True), level_set(4, False)
    assert w.max_terms == 2 and a.max_terms == 2


def test_8bit_is_uniform():
    assert level_set(8, True).ints == tuple(range(128))
    assert level_set(8, False).ints == tuple(range(256))


@pytest.mark.parametrize("bits,signed", [(6, False), (1, True), (7, True), (16, False)])
def test_unsupported_bits_raise(bits, signed):
    with pytest.raises(ValueError, match="unsupported"):
        level_set(bits, signed)
