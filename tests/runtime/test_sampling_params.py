"""SamplingParams: defaults, normalization and clear errors for bad values."""

import pytest

from autodeploy import SamplingParams
from autodeploy.utils.errors import ConfigError


def test_defaults_and_normalization():
    params = SamplingParams(stop="###", stop_token_ids=7)
    assert params.max_tokens == 16 and params.stop == ["###"] and params.stop_token_ids == [7]
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=5).is_greedy
    assert SamplingParams(max_tokens=None).max_tokens is None


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_tokens": 0}, "max_tokens=0: must be >= 1"),
        ({"max_tokens": 2.5}, "max_tokens=2.5: must be an integer"),
        ({"temperature": -1}, "temperature=-1.0: must be >= 0"),
        ({"temperature": "hot"}, "temperature='hot': must be a number"),
        ({"top_k": -3}, "top_k=-3: must be >= 0"),
        ({"top_p": 0.0}, "top_p=0.0: must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"seed": -1}, "seed=-1"),
        ({"stop_token_ids": [1, -2]}, "stop_token_ids"),
        ({"stop": ["ok", ""]}, "stop="),
        ({"ignore_eos": "yes"}, "ignore_eos='yes': must be true or false"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens=5: must be <= max_tokens (2)"),
    ],
)
def test_bad_values_are_clear_errors(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        SamplingParams(**kwargs)
    assert fragment in str(info.value)
    assert str(info.value).startswith("SamplingParams.")
