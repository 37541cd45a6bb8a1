"""Limits that must not depend on the form of a request: token-id input as one flat array or as an array of
arrays is bounded the same way (the number of inputs by MAX_INPUTS, each input's ids by the body size)."""

from __future__ import annotations

import pytest

from m3e.serving.errors import ApiError
from m3e.serving.schemas import MAX_INPUTS, _parse_input


def test_a_flat_token_id_array_is_one_input_as_its_nested_form_is():
    ids = list(range(1, MAX_INPUTS + 1000))  # more ids than MAX_INPUTS, in one input
    assert _parse_input(ids) == (None, [ids])
    assert _parse_input([ids]) == (None, [ids])


def test_too_many_inputs_is_refused_in_every_form():
    for value in ([[1]] * (MAX_INPUTS + 1), ["a"] * (MAX_INPUTS + 1)):
        with pytest.raises(ApiError, match=f"at most {MAX_INPUTS}"):
            _parse_input(value)
