from hypothesis import given
from hypothesis import strategies as st

from m3e.length_sorting import length_sorted_batches


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=60), st.integers(1, 9), st.one_of(st.none(), st.integers(1, 900)))
def test_every_index_once_and_budgets_hold(lengths, batch_size, budget):
    batches = length_sorted_batches(lengths, batch_size, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        width = max(max(lengths[i], 1) for i in batch)
        # a single item over budget still goes alone; otherwise the padded size fits
        assert len(batch) == 1 or budget is None or width * len(batch) <= budget
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest == sorted(longest, reverse=True)
