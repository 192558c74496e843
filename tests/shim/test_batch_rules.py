"""batch_rules: the per-step check accepts exactly the batches the detailed validator accepts."""

import random

import numpy as np
import pytest

from autodeploy.shim import SequenceInfo
from autodeploy.shim.batch_rules import count_prefill_if_valid, raise_first_violation
from autodeploy.utils.errors import CapacityError

MAX_SEQ_LEN, MAX_BATCH, MAX_TOKENS, PAGE, NUM_PAGES = 24, 4, 20, 4, 16
MAX_PAGES = MAX_SEQ_LEN // PAGE


def random_batch(rng: random.Random) -> tuple[list, list, list, list]:
    """A valid batch near the limits, then (usually) one rule broken on purpose."""
    num = rng.randint(1, MAX_BATCH)
    num_prefill = rng.randint(0, num)
    ids, pos, pages, slots = [], [], [], []
    for i in range(num):
        if i < num_prefill:  # prefill: from scratch, a continuation, or 1 token at position 0
            start = rng.choice([0, 0, rng.randint(1, MAX_SEQ_LEN - 2)])
            length = rng.randint(2, 5) if start else rng.randint(1, 5)
        else:
            start, length = rng.randint(1, MAX_SEQ_LEN - 1), 1
        length = min(length, MAX_SEQ_LEN - start)
        count = -(-(start + length) // PAGE) + rng.choice([0, 0, 1])
        ids.append([rng.randint(0, 99) for _ in range(length)])
        pos.append(start)
        pages.append([rng.randint(1, NUM_PAGES - 1) for _ in range(min(count, MAX_PAGES))])
        slots.append(rng.randint(0, MAX_BATCH - 1))
    i = rng.randrange(num)
    breakers = [
        lambda: None,  # keep it valid
        lambda: None,
        lambda: ids.__setitem__(i, []),  # no new tokens
        lambda: pos.__setitem__(i, -1),
        lambda: pos.__setitem__(i, MAX_SEQ_LEN + 1 - len(ids[i])),  # one past max_seq_len
        lambda: pages[i].pop(),  # one page short (or exactly enough if it had a spare)
        lambda: pages[i].extend([1] * (MAX_PAGES + 1 - len(pages[i]))),  # too many pages
        lambda: pages[i].__setitem__(-1, rng.choice([0, -1, NUM_PAGES, NUM_PAGES + 3])),
        lambda: slots.__setitem__(i, rng.choice([-1, MAX_BATCH])),
        lambda: (
            ids.__setitem__(slice(None), [[7] * 6] * num),  # 6 tokens each from 0:
            pos.__setitem__(slice(None), [0] * num),  # only max_num_tokens can break
            pages.__setitem__(slice(None), [[1, 2]] * num),
        ),
        lambda: (ids.append([1, 2]), pos.append(0), pages.append([1]), slots.append(0)),
        lambda: (ids.insert(0, [1]), pos.insert(0, 3), pages.insert(0, [1]), slots.insert(0, 0)),
        lambda: rng.choice([pos, slots, pages]).pop(),  # one list too short
        lambda: (
            ids.extend([[1]] * MAX_BATCH),
            pos.extend([1] * MAX_BATCH),
            pages.extend([[2]] * MAX_BATCH),
            slots.extend([0] * MAX_BATCH),
        ),
        lambda: (ids.clear(), pos.clear(), pages.clear(), slots.clear()),
    ]
    rng.choice(breakers)()
    return ids, pos, pages, slots


def detailed_verdict(info: SequenceInfo, ids, pos, pages, slots) -> bool:
    try:
        raise_first_violation(info, ids, pos, pages, slots)
    except (ValueError, CapacityError):
        return False
    return True


def test_quick_check_agrees_with_the_detailed_validator_on_random_batches():
    info = SequenceInfo(MAX_SEQ_LEN, MAX_BATCH, MAX_TOKENS, page_size=PAGE)
    info.set_num_pages(NUM_PAGES)
    rng = random.Random(0)
    verdicts = {True: 0, False: 0}
    for _ in range(4000):
        ids, pos, pages, slots = random_batch(rng)
        flat_pages = np.array([p for seq in pages for p in seq], dtype=np.int64)
        quick = count_prefill_if_valid(
            info, [len(s) for s in ids], pos, [len(p) for p in pages], flat_pages, slots
        )
        valid = detailed_verdict(info, ids, pos, pages, slots)
        assert (quick is not None) == valid, (ids, pos, pages, slots)
        if valid:
            leading = 0
            while leading < len(ids) and not (len(ids[leading]) == 1 and pos[leading] > 0):
                leading += 1
            assert quick == leading
        verdicts[valid] += 1
    assert min(verdicts.values()) > 500  # both kinds were exercised


def test_page_range_check_on_long_page_lists():
    # more than 64 pages: the numpy min/max branch
    info = SequenceInfo(max_seq_len=400, max_batch_size=1, page_size=4)
    info.set_num_pages(200)
    ok = np.arange(1, 101, dtype=np.int64)
    assert count_prefill_if_valid(info, [1], [399], [100], ok, [0]) == 0
    for bad in (0, -5, 200):
        pages = ok.copy()
        pages[57] = bad
        assert count_prefill_if_valid(info, [1], [399], [100], pages, [0]) is None
        with pytest.raises(ValueError, match="scratch page|outside the pool"):
            raise_first_violation(info, [[1]], [399], [pages.tolist()], [0])
