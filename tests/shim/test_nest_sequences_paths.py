"""nest_sequences' fast paths (decode-only rows, constants kept across decode steps, cached views)
against an independent per-token formulation of the packed-batch contract."""

import random

import pytest
import torch

from autodeploy.shim import ARG_NAMES, SequenceInfo
from autodeploy.utils.errors import CapacityError

PAGE = 4


def make_info(**kwargs) -> SequenceInfo:
    defaults = dict(max_seq_len=32, max_batch_size=4, max_num_tokens=40, page_size=PAGE)
    info = SequenceInfo(**{**defaults, **kwargs})
    info.set_num_pages(64)
    for name in ARG_NAMES:
        info.activate_arg("batch_info_host" if name == "batch_info" else name)
        if name != "batch_info":
            info.activate_arg(f"{name}_host")
    return info


def expected_layout(ids, pos, pages, slots, rows=None) -> dict[str, list]:
    """The contract, token by token; ``rows`` > len(ids) adds padding rows."""
    ids, pos, pages, slots = list(ids), list(pos), list(pages), list(slots)
    num_real = len(ids)
    for _ in range((rows or num_real) - num_real):
        ids.append([0]), pos.append(0), pages.append([SequenceInfo.SCRATCH_PAGE])
        slots.append(4)  # spare_slot = max_batch_size
    decode = [len(s) == 1 and p > 0 for s, p in zip(ids[:num_real], pos)]
    num_prefill = decode.count(False)
    tokens, positions, cu_seqlen, cu_pages = [], [], [0], [0]
    for seq, start, seq_pages in zip(ids, pos, pages):
        for offset, token in enumerate(seq):
            tokens.append(token)
            positions.append(start + offset)
        cu_seqlen.append(len(tokens))
        cu_pages.append(cu_pages[-1] + len(seq_pages))
    ends = [p + len(s) for p, s in zip(pos, ids)]
    return {
        "input_ids": tokens,
        "position_ids": positions,
        "batch_info": [num_prefill, sum(len(s) for s in ids[:num_prefill]), len(ids) - num_prefill],
        "cu_seqlen": cu_seqlen,
        "seq_len": [len(s) for s in ids],
        "input_pos": pos,
        "seq_len_with_cache": ends,
        "cache_loc": [page for seq_pages in pages for page in seq_pages],
        "cu_num_pages": cu_pages,
        "last_page_len": [(end - 1) % PAGE + 1 for end in ends],
        "slot_idx": slots,
    }


def assert_layout(info: SequenceInfo, expected: dict[str, list]) -> None:
    args = info.named_args
    for name, values in expected.items():
        if name in ("input_ids", "position_ids"):
            got = args[name].flatten().tolist()
            assert args[f"{name}"].shape[0 if info.is_decode_only else 1] == len(values)
        elif name == "batch_info":
            got = args["batch_info_host"].tolist()
        else:
            got = args[name].tolist()
            assert args[f"{name}_host"].tolist() == values, f"{name}_host"
        assert got == values, name


def random_valid_batch(rng: random.Random, info: SequenceInfo):
    num = rng.randint(1, info.max_batch_size)
    num_prefill = rng.choice([0, 0, rng.randint(0, num)])
    ids, pos, pages, next_page = [], [], [], 1
    budget = info.max_num_tokens
    for i in range(num):
        if i < num_prefill:
            start = rng.choice([0, rng.randint(1, 20)])
            length = min(rng.randint(2, 6), budget - (num - i - 1))
        else:
            start, length = rng.randint(1, 30), 1
        budget -= length
        count = min(-(-(start + length) // PAGE) + rng.choice([0, 1]), info.max_pages_per_seq)
        ids.append([rng.randint(0, 99) for _ in range(length)])
        pos.append(start)
        pages.append(list(range(next_page, next_page + count)))
        next_page += count
    slots = rng.sample(range(info.max_batch_size), num)
    return ids, pos, pages, slots


def test_every_path_matches_the_contract_across_a_random_sequence_of_steps():
    """Decode-only, mixed, padded and generate-only batches in random order: each step's
    buffers equal the per-token formulation, whatever the previous step left behind."""
    info = make_info()
    rng = random.Random(1)
    kinds = set()
    for _ in range(300):
        padded = rng.random() < 0.3
        info.set_padded_batch_sizes([2, 4] if padded else None)
        if rng.random() < 0.1:
            rows = rng.randint(1, 4)
            info.set_generate_only_batch(rows)
            assert_layout(info, expected_layout([], [], [], [], rows=rows))
            kinds.add("generate_only")
            continue
        ids, pos, pages, slots = random_valid_batch(rng, info)
        info.nest_sequences(ids, pos, pages, slots)
        decode_only = all(len(s) == 1 and p > 0 for s, p in zip(ids, pos))
        rows = len(ids)
        if padded and decode_only:
            rows = 2 if rows <= 2 else 4
        kinds.add(("decode" if decode_only else "mixed", rows > len(ids)))
        assert info.is_decode_only == decode_only and info.batch_size == rows
        assert_layout(info, expected_layout(ids, pos, pages, slots, rows=rows))
        logits = torch.randn(rows if decode_only else 1, 1 if decode_only else len(sum(ids, [])), 3)
        last = torch.cumsum(torch.tensor([len(s) for s in ids]), 0) - 1
        expected = logits.reshape(-1, 3)[last]
        assert torch.equal(info.gather_last_logits(logits), expected)
    assert kinds >= {("decode", False), ("decode", True), ("mixed", False), "generate_only"}


def test_decode_steps_reuse_the_same_views_and_keep_their_addresses():
    info = make_info()
    info.nest_sequences([[1], [2]], [5, 9], [[1, 2], [3, 4, 5]])
    first = info.named_args
    info.nest_sequences([[3], [4]], [6, 10], [[1, 2], [3, 4, 5]])
    second = info.named_args
    for name, tensor in first.items():
        assert second[name] is tensor, name  # same shape: the same view object
    info.nest_sequences([[5], [6]], [8, 11], [[1, 2, 6], [3, 4, 5]])  # one more page
    third = info.named_args
    assert third["cache_loc"].tolist() == [1, 2, 6, 3, 4, 5]
    assert third["cache_loc"].data_ptr() == first["cache_loc"].data_ptr()
    assert third["input_ids"] is first["input_ids"] and third["seq_len"] is first["seq_len"]
    info.nest_sequences([[7], [8], [9]], [9, 11, 3], [[1, 2, 6], [3, 4, 5], [7]])
    assert info.named_args["input_ids"].data_ptr() == first["input_ids"].data_ptr()


def test_activating_an_arg_after_steps_adds_it():
    info = SequenceInfo(max_seq_len=32, max_batch_size=4, page_size=PAGE)
    info.nest_sequences([[1], [2]], [5, 9], [[1, 2], [3, 4, 5]])
    assert "cu_num_pages" not in info.named_args
    info.activate_arg("cu_num_pages")
    info.nest_sequences([[1], [2]], [6, 10], [[1, 2], [3, 4, 5]])
    assert info.named_args["cu_num_pages"].tolist() == [0, 2, 5]
    assert info.get_arg("seq_len_with_cache").tolist() == [7, 11]  # not active: still readable


def test_views_cached_during_an_inference_mode_step_work_outside_it():
    info = make_info()  # the engine steps under inference_mode; tests and tools often do not
    with torch.inference_mode():
        info.nest_sequences([[1], [2]], [5, 9], [[1, 2], [3, 4, 5]])
        logits = info.gather_last_logits(torch.randn(2, 1, 3))
    assert logits.shape == (2, 3)
    for name, tensor in info.named_args.items():
        assert not tensor.is_inference(), name
    info.named_args["seq_len"].add_(0)  # in-place use outside inference mode works


@pytest.mark.parametrize(
    "bad",
    [
        dict(input_ids=[[1], [None]]),  # not a token id: fails in the conversion
        dict(cache_loc=[[1, 2], [0, 4, 5]]),  # scratch page
        dict(input_pos=[5, 40]),  # past max_seq_len
        dict(slot_idx=[0, 4]),
    ],
)
def test_a_rejected_decode_step_leaves_the_previous_decode_batch(bad):
    info = make_info()
    good = dict(input_ids=[[1], [2]], input_pos=[5, 9], cache_loc=[[1, 2], [3, 4, 5]])
    info.nest_sequences(**good, slot_idx=[0, 1])
    before = {name: t.clone() for name, t in info.named_args.items()}
    with pytest.raises((TypeError, ValueError, CapacityError)):
        info.nest_sequences(**{**good, "slot_idx": [0, 1], **bad})
    for name, tensor in info.named_args.items():
        assert torch.equal(tensor, before[name]), name
