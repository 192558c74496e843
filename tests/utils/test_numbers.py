"""The integer helpers: powers of two (block sizes, CUDA-graph batch sizes), ceil-div."""

from autodeploy.utils.numbers import ceil_div, next_power_of_2, powers_of_two_below


def test_next_power_of_2():
    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 4, 5, 16, 17)] == [1, 1, 2, 4, 4, 8, 16, 32]


def test_powers_of_two_below():
    assert powers_of_two_below(1) == [] and powers_of_two_below(0) == []
    assert powers_of_two_below(2) == [1]
    assert powers_of_two_below(8) == [1, 2, 4] and powers_of_two_below(9) == [1, 2, 4, 8]


def test_ceil_div():
    assert [ceil_div(a, 4) for a in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
