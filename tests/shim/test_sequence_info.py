"""SequenceInfo: packed-batch layout, validation, activation, padding, hooks, logit gather."""

import pytest
import torch

from autodeploy.shim import ARG_NAMES, SequenceInfo
from autodeploy.utils.errors import CapacityError, ConfigError


def make_info(**kwargs) -> SequenceInfo:
    defaults = dict(max_seq_len=32, max_batch_size=4, max_num_tokens=40, page_size=4)
    info = SequenceInfo(**{**defaults, **kwargs})
    info.set_num_pages(64)
    return info


def activate_all(info: SequenceInfo) -> None:
    for name in ARG_NAMES:
        if name != "batch_info":
            info.activate_arg(name)
    info.activate_arg("batch_info_host")


def as_list(t: torch.Tensor) -> list:
    return t.tolist()


def test_mixed_batch_layout():
    info = make_info()
    activate_all(info)
    # prefill of 5 tokens, chunked-prefill continuation (3 tokens at pos 4), decode at pos 9
    info.nest_sequences(
        input_ids=[[1, 2, 3, 4, 5], [6, 7, 8], [9]],
        input_pos=[0, 4, 9],
        cache_loc=[[3, 7], [8, 2], [5, 6, 9]],
        slot_idx=[2, 0, 1],
    )
    args = info.named_args
    assert as_list(args["input_ids"]) == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert as_list(args["position_ids"]) == [[0, 1, 2, 3, 4, 4, 5, 6, 9]]
    assert args["input_ids"].dtype == torch.int64 and args["position_ids"].dtype == torch.int64
    assert as_list(args["batch_info_host"]) == [2, 8, 1]
    assert args["batch_info_host"].device.type == "cpu"
    assert as_list(args["cu_seqlen"]) == [0, 5, 8, 9]
    assert as_list(args["seq_len"]) == [5, 3, 1]
    assert as_list(args["input_pos"]) == [0, 4, 9]
    assert as_list(args["seq_len_with_cache"]) == [5, 7, 10]
    assert as_list(args["cache_loc"]) == [3, 7, 8, 2, 5, 6, 9]
    assert as_list(args["cu_num_pages"]) == [0, 2, 4, 7]
    assert as_list(args["last_page_len"]) == [1, 3, 2]
    assert as_list(args["slot_idx"]) == [2, 0, 1]
    assert args["slot_idx"].dtype == torch.int64 and args["cu_seqlen"].dtype == torch.int32
    assert (info.num_sequences, info.num_tokens, info.num_prefill, info.num_decode) == (3, 9, 2, 1)
    assert info.num_prefill_tokens == 8 and not info.is_decode_only
    assert info.seq_lens == [5, 3, 1] and info.input_positions == [0, 4, 9]


def test_decode_only_batch_is_b_by_1():
    info = make_info()
    info.activate_arg("cu_seqlen")
    info.nest_sequences([[11], [12], [13]], [4, 7, 1], [[1, 2], [3, 4], [5]])
    args = info.named_args
    assert args["input_ids"].shape == (3, 1)
    assert as_list(args["position_ids"]) == [[4], [7], [1]]
    assert info.is_decode_only and info.num_decode == 3 and info.batch_size == 3
    assert as_list(info.get_arg("batch_info_host")) == [0, 0, 3]


def test_single_token_at_position_zero_is_prefill():
    info = make_info()
    info.nest_sequences([[1]], [0], [[1]])
    assert not info.is_decode_only
    assert info.named_args["input_ids"].shape == (1, 1)
    assert as_list(info.get_arg("batch_info_host")) == [1, 1, 0]


def test_named_args_hold_only_active_args():
    info = make_info()
    assert set(info.named_args) == {"input_ids", "position_ids"}
    assert info.activate_arg("cache_loc") is True
    assert info.activate_arg("cache_loc") is False
    assert info.activate_arg("input_ids") is False
    info.activate_arg("cu_seqlen_host")
    assert list(info.named_args) == ["input_ids", "position_ids", "cache_loc", "cu_seqlen_host"]
    info.nest_sequences([[1, 2, 3]], [0], [[1]])
    assert info.named_args["cu_seqlen_host"].device.type == "cpu"
    assert as_list(info.named_args["cu_seqlen_host"]) == [0, 3]


def test_unknown_arg_suggests_a_name():
    info = make_info()
    with pytest.raises(ConfigError, match="cache_loc"):
        info.activate_arg("cache_locs")


def test_all_device_args_share_one_buffer():
    info = make_info()
    activate_all(info)
    info.nest_sequences([[1, 2, 3], [4]], [0, 2], [[1], [2]])
    storages = {
        t.untyped_storage().data_ptr()
        for name, t in info.named_args.items()
        if name != "batch_info_host"
    }
    assert len(storages) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(input_ids=[[1], [2, 3]], input_pos=[5, 0], cache_loc=[[1, 2], [3]]),
            ValueError,
            "put prefill sequences first",
        ),
        (
            dict(input_ids=[[1] * 41], input_pos=[0], cache_loc=[[1] * 8]),
            CapacityError,
            "max_num_tokens=40",
        ),
        (
            dict(input_ids=[[1]] * 5, input_pos=[1] * 5, cache_loc=[[1]] * 5),
            CapacityError,
            "max_batch_size=4",
        ),
        (
            dict(input_ids=[[1, 2, 3]], input_pos=[30], cache_loc=[[1] * 8]),
            CapacityError,
            "max_seq_len=32",
        ),
        (
            dict(input_ids=[[1, 2, 3, 4, 5]], input_pos=[0], cache_loc=[[1]]),
            CapacityError,
            "needs 2 pages",
        ),
        (
            dict(input_ids=[[1]], input_pos=[0], cache_loc=[[1] * 9]),
            CapacityError,
            "max_pages_per_seq=8",
        ),
        (dict(input_ids=[[1]], input_pos=[0], cache_loc=[[0]]), ValueError, "scratch page"),
        (dict(input_ids=[[1]], input_pos=[0], cache_loc=[[64]]), ValueError, "outside the pool"),
        (dict(input_ids=[[]], input_pos=[0], cache_loc=[[1]]), ValueError, "no new tokens"),
        (dict(input_ids=[[1]], input_pos=[0, 1], cache_loc=[[1]]), ValueError, "one entry"),
        (dict(input_ids=[], input_pos=[], cache_loc=[]), ValueError, "empty"),
        (
            dict(input_ids=[[1]], input_pos=[0], cache_loc=[[1]], slot_idx=[4]),
            ValueError,
            "slot 4 is for padding",
        ),
    ],
)
def test_invalid_batches_are_rejected_and_leave_the_previous_batch(kwargs, error, match):
    info = make_info()
    info.activate_arg("cu_seqlen")
    info.nest_sequences([[7, 8]], [0], [[1]])
    with pytest.raises(error, match=match):
        info.nest_sequences(**kwargs)
    assert as_list(info.named_args["input_ids"]) == [[7, 8]]
    assert as_list(info.named_args["cu_seqlen"]) == [0, 2]


def test_padding_of_decode_only_batches():
    info = make_info()
    activate_all(info)
    info.set_padded_batch_sizes([4, 2, 1])
    assert info.padded_batch_sizes == [1, 2, 4]
    info.nest_sequences([[11], [12], [13]], [4, 7, 1], [[1, 2], [3, 4], [5]], slot_idx=[0, 1, 2])
    args = info.named_args
    assert args["input_ids"].shape == (4, 1) and info.batch_size == 4
    assert info.num_sequences == 3 and info.num_tokens == 3 and info.num_decode == 3
    assert as_list(args["batch_info_host"]) == [0, 0, 4]  # padding rows count as decode rows
    assert as_list(args["input_pos"])[3] == 0 and as_list(args["seq_len"])[3] == 1
    assert as_list(args["cache_loc"])[-1] == SequenceInfo.SCRATCH_PAGE
    assert as_list(args["cu_num_pages"]) == [0, 2, 4, 5, 6]
    assert as_list(args["slot_idx"]) == [0, 1, 2, info.spare_slot]
    logits = torch.arange(4 * 5, dtype=torch.float32).view(4, 1, 5)
    assert torch.equal(info.gather_last_logits(logits), logits[:3, 0])


def test_padding_skips_batches_with_prefill_or_above_the_largest_size():
    info = make_info()
    info.set_padded_batch_sizes([2])
    info.nest_sequences([[1, 2], [3]], [0, 5], [[1], [2, 3]])
    assert info.batch_size == 2 and info.num_sequences == 2
    info.nest_sequences([[1], [2], [3]], [1, 1, 1], [[1], [2], [3]])
    assert info.batch_size == 3  # no captured size >= 3: runs unpadded
    info.set_padded_batch_sizes(None)
    info.nest_sequences([[1]], [1], [[1]])
    assert info.batch_size == 1


def test_padded_sizes_must_fit_the_limits():
    info = make_info()
    with pytest.raises(ConfigError, match=r"\[5\]"):
        info.set_padded_batch_sizes([1, 5])


def test_gather_last_logits_of_a_prefill_batch():
    info = make_info()
    info.nest_sequences([[1, 2, 3], [4, 5], [6]], [0, 0, 3], [[1], [2], [3]])
    logits = torch.randn(1, 6, 7)
    assert torch.equal(info.gather_last_logits(logits), logits[0, [2, 4, 5]])
    with pytest.raises(ValueError, match="token rows"):
        info.gather_last_logits(torch.randn(1, 5, 7))


def test_host_prepare_hooks_run_after_every_step_once_per_function():
    info = make_info()
    seen = []

    def hook(i):
        seen.append(i.num_sequences)

    info.register_host_prepare_hook(hook)
    info.register_host_prepare_hook(hook)
    info.nest_sequences([[1, 2]], [0], [[1]])
    info.nest_sequences([[1], [2]], [2, 3], [[1], [2]])
    assert seen == [1, 2]


def test_example_and_sample_batches():
    info = make_info(max_batch_size=1, max_num_tokens=32)
    inputs = info.example_inputs()
    assert inputs["input_ids"].shape == (2, 4)
    assert inputs["position_ids"].tolist()[1] == [0, 1, 2, 3]
    info.set_example_sequence()  # batch 2 even with max_batch_size = 1 (export needs >= 2)
    assert info.num_sequences == 2 and info.num_tokens == 8
    info.activate_arg("cache_loc")
    assert set(info.named_args["cache_loc"].tolist()) == {SequenceInfo.SCRATCH_PAGE}

    info = make_info(max_seq_len=16, max_batch_size=4, max_num_tokens=40)
    info.set_max_num_tokens_sample()
    assert info.num_tokens == 40 and info.seq_lens == [16, 16, 8]
    info.set_generate_only_batch(3)
    assert info.is_decode_only and info.batch_size == 3 and info.num_sequences == 0


def test_derived_limits():
    info = SequenceInfo(max_seq_len=10, max_batch_size=3, page_size=4)
    assert info.max_num_tokens == 10
    assert info.max_pages_per_seq == 3
    assert info.num_state_slots == 4 and info.spare_slot == 3
    assert info.num_pages is None
    with pytest.raises(ConfigError):
        SequenceInfo(max_seq_len=0, max_batch_size=1)
    with pytest.raises(ConfigError):
        info.set_num_pages(1)


@pytest.mark.gpu
def test_cuda_buffers_one_copy_and_pinned_host():
    info = make_info(device="cuda")
    activate_all(info)
    assert info._buffer.host_buf.is_pinned()
    info.nest_sequences([[1, 2, 3], [4]], [0, 5], [[1], [2, 3]])
    args = info.named_args
    assert args["input_ids"].is_cuda and args["cache_loc"].is_cuda
    assert not args["batch_info_host"].is_cuda
    assert args["cache_loc"].tolist() == [1, 2, 3]
    logits = torch.randn(1, 4, 5, device="cuda")
    assert torch.equal(info.gather_last_logits(logits), logits[0, [2, 3]])
    info.to("cpu")
    assert info.named_args["cache_loc"].tolist() == [1, 2, 3]


def test_added_region_is_filled_each_step_in_the_same_buffer():
    """An op family's region: written by its fill function, copied with the rest, sliced per
    step like the built-in regions, and a model input once activated."""
    import numpy as np

    from autodeploy.shim import Region

    def fill(step, out):  # two values per row: slot and first position of the step
        out[0::2] = step.slot_idx
        out[1::2] = step.input_pos

    info = make_info()
    size_before = info._buffer.nbytes
    info.add_region(Region("slot_and_start", torch.int64, "row", width=2, fill=fill))
    info.add_region(Region("slot_and_start", torch.int64, "row", width=2, fill=fill))  # no-op
    assert info._buffer.nbytes > size_before and "slot_and_start" in info.regions
    assert list(info.regions)[-3:] == ["cache_loc", "position_ids", "input_ids"]
    info.activate_arg("slot_and_start")
    info.activate_arg("slot_and_start_host")
    info.nest_sequences([[1, 2, 3], [4]], [0, 6], [[1], [2, 3]], slot_idx=[3, 1])
    assert as_list(info.named_args["slot_and_start"]) == [3, 0, 1, 6]
    info.nest_sequences([[5], [6]], [3, 7], [[1], [2, 3]], slot_idx=[3, 1])  # decode only
    assert as_list(info.get_arg("slot_and_start_host")) == [3, 3, 1, 7]
    assert isinstance(info._buffer.host_np["slot_and_start"], np.ndarray)
    with pytest.raises(ConfigError, match="already has a region 'seq_len'"):
        info.add_region(Region("seq_len", torch.int64))
    with pytest.raises(ConfigError, match="without the '_host' suffix"):
        Region("x_host", torch.int32)
    with pytest.raises(ConfigError, match="per must be one of"):
        Region("x", torch.int32, per="sequence")  # type: ignore[arg-type]


def test_unknown_arg_names_suggest_and_internal_regions_are_not_args():
    info = make_info()
    with pytest.raises(ConfigError, match="Did you mean 'seq_len'"):
        info.activate_arg("seqlen")
    with pytest.raises(ConfigError, match="add_region"):
        info.activate_arg("last_token_idx")
    assert not hasattr(SequenceInfo, "available_args")
