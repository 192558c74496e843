"""lm-evaluation-harness: ``--model autodeploy`` gives the same per-document results as lm-eval's
own ``--model hf`` on the same checkpoint (fp32, CPU).

A tiny local task set (JSONL files, no download) covers the three request types:
``multiple_choice`` (loglikelihood), ``loglikelihood_rolling`` (texts longer than one window)
and ``generate_until`` (greedy, stop strings). The autodeploy side runs through
``python -m autodeploy.tools.lm_eval``'s ``main`` (lm-eval's own command line), in-process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

import autodeploy
from autodeploy.integrations.lm_eval import AutoDeployLM, settings_from_model_args

lm_eval = pytest.importorskip("lm_eval")

TASKS = ["ad_tiny_mc", "ad_tiny_rolling", "ad_tiny_gen"]
MAX_SEQ_LEN = 64  # max_length (scored window) = 62 on both sides
MC = [
    {"question": "The sky is", "choices": [" blue", " green", " loud"], "label": 0},
    {"question": "Two plus two equals", "choices": [" four", " five"], "label": 0},
    {"question": "Water is", "choices": [" wet", " dry", " made of cheese"], "label": 0},
]
ROLLING = [  # the first text spans several 62-token windows
    {
        "text": "Once upon a time, in a small village by the sea, there lived an old fisherman "
        "who told stories to every child that would listen. " * 3
    },
    {"text": "The quick brown fox jumps over the lazy dog."},
]
GEN = [
    {"prompt": "Q: What is the capital of France?\nA:", "answer": " Paris"},
    {"prompt": "Count: one, two, three,", "answer": " four"},
    {"prompt": "Hello", "answer": " world"},
]


def first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def write_tasks(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("mc", MC), ("rolling", ROLLING), ("gen", GEN)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def head(task: str, data: str, output_type: str) -> str:
        return (
            f"task: {task}\ndataset_path: json\ntest_split: test\n"
            f"dataset_kwargs:\n  data_files:\n    test: {root / data}\n"
            f"output_type: {output_type}\n"
        )

    (root / "ad_tiny_mc.yaml").write_text(
        head("ad_tiny_mc", "mc.jsonl", "multiple_choice")
        + "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (root / "ad_tiny_rolling.yaml").write_text(
        head("ad_tiny_rolling", "rolling.jsonl", "loglikelihood_rolling")
        + "doc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n"
    )
    (root / "ad_tiny_gen.yaml").write_text(
        head("ad_tiny_gen", "gen.jsonl", "generate_until")
        + "doc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n', '.']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The built-in tiny Llama's config and tokenizer with random weights (a wider init, so
    greedy choices are not near-ties)."""
    source = next((Path(autodeploy.__file__).parent / "models" / "builtin").iterdir())
    directory = tmp_path_factory.mktemp("lm_eval") / "ckpt"
    config = transformers.AutoConfig.from_pretrained(source)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, directory / name)
    return directory


def test_import_registers_the_model_name():
    from lm_eval.api.registry import get_model

    assert get_model("autodeploy") is AutoDeployLM


def test_model_args_become_settings():
    settings = settings_from_model_args(
        {"pretrained": "m", "kv_cache_config.max_tokens": 64, "yaml_extra": "a.yaml;b.yaml"}
    )
    assert settings["model"] == "m" and settings["kv_cache_config"] == {"max_tokens": 64}
    assert settings["yaml_extra"] == ["a.yaml", "b.yaml"]
    assert settings_from_model_args({"transforms.compile_model.backend": "torch-simple"}) == {
        "transforms": {"compile_model": {"backend": "torch-simple"}}
    }


def test_token_scores_from_prompt_logprobs_entries():
    from autodeploy.integrations.prompt_scoring import token_scores

    entries = [None, {5: -0.5}, {7: -2.0, 9: -0.1}]  # token 5 is the argmax, token 7 is not
    scores = token_scores([1, 5, 7], entries)
    assert [(s.logprob, s.greedy) for s in scores] == [(-0.5, True), (-2.0, False)]


def test_per_document_results_match_lm_eval_hf(checkpoint, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    from autodeploy.tools import lm_eval as tool

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks_dir = write_tasks(tmp_path / "tasks")
    reference = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={checkpoint},dtype=float32,max_length={MAX_SEQ_LEN - 2}",
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(tasks_dir)),
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )["samples"]

    out_dir = tmp_path / "out"
    model_args = (
        f"model={checkpoint},device=cpu,max_seq_len={MAX_SEQ_LEN},max_batch_size=8,"
        "kv_cache_config.max_tokens=4096"
    )
    argv = ["--model", "autodeploy", "--model_args", model_args, "--tasks", ",".join(TASKS)]
    argv += ["--include_path", str(tasks_dir), "--log_samples", "--output_path", str(out_dir)]
    tool.main(argv)

    for task in TASKS:
        (samples_file,) = out_dir.rglob(f"samples_{task}_*.jsonl")
        ours = [json.loads(line) for line in samples_file.read_text().splitlines()]
        theirs = {doc["doc_id"]: doc for doc in reference[task]}
        assert len(ours) == len(theirs) > 0
        for doc in ours:
            expected = theirs[doc["doc_id"]]["filtered_resps"]
            got = doc["filtered_resps"]
            if task == "ad_tiny_gen":
                assert got == expected, (task, doc["doc_id"])
                continue
            # the samples file holds strings; the in-process reference holds numbers
            assert [float(first(v)) for v in got] == pytest.approx(
                [float(first(v)) for v in expected], abs=1e-3
            ), (task, doc["doc_id"])
            if task == "ad_tiny_mc":  # is_greedy agrees too
                assert [str(v[1]) for v in got] == [str(v[1]) for v in expected]
