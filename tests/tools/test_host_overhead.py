"""host_overhead: times nest_sequences and a decode Engine.step on the batches it claims to."""

from autodeploy.tools import host_overhead


def test_prints_one_row_per_batch_size(capsys):
    argv = "--batch-sizes 1 3 --steps 4 --repeats 2 --prompt-len 9 --page-size 4 --vocab 16"
    rows = host_overhead.measure(argv.split())
    assert [row["batch"] for row in rows] == [1, 3]
    for row in rows:
        assert 0 < row["nest_us"] and 0 < row["host_us"] + row["sample_us"] <= row["engine_step_us"]
    lines = capsys.readouterr().out.splitlines()
    assert "nest_sequences" in lines[1] and len(lines) == 4


def test_the_engine_it_times_is_decoding_every_request():
    args = host_overhead.parse_args(["--steps", "4", "--prompt-len", "9", "--page-size", "4"])
    engine = host_overhead.decoding_engine(args, batch_size=3)
    engine.step()
    info = engine.cm.info
    assert engine.num_running == 3 and info.is_decode_only and info.num_sequences == 3
    assert info.input_positions == [9, 9, 9]  # the first generated token follows the prompt
