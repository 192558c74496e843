"""Build a model with autodeploy, generate for a few prompts, optionally benchmark it.

::

    python -m autodeploy.tools.build_and_run                      # built-in tiny model, CPU ok
    python -m autodeploy.tools.build_and_run --model path/to/hf_dir --yaml-extra my.yaml \\
        --args.model-kwargs.num-hidden-layers=2 --args.transforms.export-to-gm.strict=false \\
        --prompt.batch-size 4 --prompt.sp-kwargs.max-tokens 64 --prompt.sp-kwargs.temperature 0
    python -m autodeploy.tools.build_and_run --benchmark.enabled=true --benchmark.isl=128 \\
        --benchmark.osl=32 --benchmark.bs=4 --benchmark.results-path=bench.json
    python -m autodeploy.tools.build_and_run --dry-run            # resolved config + sources

Options: every ``LlmArgs`` setting as ``--<setting>`` or ``--args.<setting>[.<key>...]`` (see
``autodeploy/config/cli.py`` for the syntax), plus

- ``--prompt.batch-size N`` (default 2): how many prompts; ``--prompt.queries`` (a string or a
  list; default: built-in example prompts) is cycled or cut to the batch size;
  ``--prompt.sp-kwargs.<field>``: ``SamplingParams`` fields (default max_tokens=32, greedy).
- ``--benchmark.enabled``, ``.isl`` (input tokens), ``.osl`` (output tokens), ``.bs``
  (concurrent requests), ``.num`` (timed repetitions, after one warm-up), ``.results-path``
  (JSON written there; ``null`` to skip). Random prompt ids, ``ignore_eos``, greedy.
  ``max_seq_len`` is raised to ``isl + osl`` (and ``max_batch_size`` to ``bs``) unless set
  explicitly.
- ``--dry-run``: print the resolved configuration with the source of every value, and exit.

Exit status (the rule of every tool, ``autodeploy/utils/exit_codes.py``): 0 success; 2 bad input
or configuration, including a prompt that failed (e.g. longer than ``max_seq_len``); 1 an
internal error; 141 when the output pipe is closed.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import LlmArgs, cli_help_text, parse_cli, print_resolved_config
from ..utils.errors import ConfigError
from ..utils.exit_codes import EXIT_BAD_INPUT, EXIT_OK, tool_main
from ..utils.logger import logger
from ..utils.suggest import close_matches

PROG = "python -m autodeploy.tools.build_and_run"
GROUPS = ("prompt", "benchmark")
FLAGS = ("dry_run",)

DEFAULT_QUERIES = [
    "How big is the universe? ",
    "In simple words and a single sentence, explain the concept of gravity: ",
    "How to fix slicing in golf? ",
    "Where is the capital of Iceland? ",
    "What are the three primary colors? ",
    "Write a haiku about the sea: ",
    "The quickest way to learn a language is ",
    "Once upon a time, in a small village, ",
]
DEFAULT_SP_KWARGS: dict[str, Any] = {"max_tokens": 32, "temperature": 0.0}


class PromptConfig(BaseModel):
    """``--prompt.*``: what to generate for."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=2, ge=1, description="Number of prompts.")
    queries: list[str] | None = Field(
        default=None, description="Prompts, cycled or cut to batch_size (default: built-in)."
    )
    sp_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=f"SamplingParams fields over the defaults {DEFAULT_SP_KWARGS}.",
    )

    @field_validator("queries", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def prompts(self) -> list[str]:
        source = self.queries or DEFAULT_QUERIES
        return list(itertools.islice(itertools.cycle(source), self.batch_size))

    def sampling_kwargs(self) -> dict[str, Any]:
        return {**DEFAULT_SP_KWARGS, **self.sp_kwargs}


class BenchmarkConfig(BaseModel):
    """``--benchmark.*``: a timed run on random prompts."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Run the benchmark after the prompts.")
    num: int = Field(default=10, ge=1, description="Timed repetitions (after one warm-up).")
    isl: int = Field(default=2048, ge=1, description="Input sequence length (tokens).")
    osl: int = Field(default=128, ge=1, description="Output sequence length (tokens).")
    bs: int = Field(default=1, ge=1, description="Concurrent requests per repetition.")
    results_path: str | None = Field(
        default="benchmark_results.json", description="Where to write the JSON (null: nowhere)."
    )


def _group_config(model: type[BaseModel], values: dict[str, Any], group: str) -> Any:
    unknown = [key for key in values if key not in model.model_fields]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"Unknown option '--{group}.{key.replace('_', '-')}'."
            f"{_kebab_hint(key, model.model_fields, '--' + group + '.')} Known: "
            f"{', '.join('--' + group + '.' + k.replace('_', '-') for k in model.model_fields)}."
        )
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{group}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"Invalid {group} options: {problems}.") from None


def _kebab_hint(key: str, names: Any, prefix: str) -> str:
    close = [f"'{prefix}{k.replace('_', '-')}'" for k in close_matches(key, names)]
    return f" Did you mean {' or '.join(close)}?" if close else ""


def _sampling_params(kwargs: dict[str, Any]) -> Any:
    from dataclasses import fields

    from ..runtime.sampling import SamplingParams

    names = [f.name for f in fields(SamplingParams)]
    for key in kwargs:
        if key not in names:
            raise ConfigError(
                f"Unknown option '--prompt.sp-kwargs.{key.replace('_', '-')}': not a "
                f"SamplingParams field.{_kebab_hint(key, names, '--prompt.sp-kwargs.')} "
                f"Fields: {', '.join(names)}."
            )
    return SamplingParams(**kwargs)


def resolve(argv: list[str] | None) -> tuple[LlmArgs, PromptConfig, BenchmarkConfig, bool]:
    """Parse and validate everything (no model is built)."""
    parsed = parse_cli(argv, groups=GROUPS, flags=FLAGS)
    prompt = _group_config(PromptConfig, parsed.get("prompt", {}), "prompt")
    bench = _group_config(BenchmarkConfig, parsed.get("benchmark", {}), "benchmark")
    _sampling_params(prompt.sampling_kwargs())  # fail early on bad sampling options
    cli_args = dict(parsed.get("args", {}))
    args = LlmArgs.from_cli(cli_args)
    if bench.enabled:
        raised = {}
        if args.max_seq_len < bench.isl + bench.osl and "max_seq_len" not in cli_args:
            raised["max_seq_len"] = bench.isl + bench.osl
        if args.max_batch_size < bench.bs and "max_batch_size" not in cli_args:
            raised["max_batch_size"] = bench.bs
        if raised:
            logger.info("raised for the benchmark: %s", raised)
            args = LlmArgs.from_cli({**cli_args, **raised})
        if args.max_seq_len < bench.isl + bench.osl:
            raise ConfigError(
                f"The benchmark needs isl + osl = {bench.isl + bench.osl} tokens per sequence "
                f"but --args.max-seq-len={args.max_seq_len} was set explicitly. Raise it or "
                "lower --benchmark.isl / --benchmark.osl."
            )
    return args, prompt, bench, bool(parsed.get("dry_run"))


def run_benchmark(llm: Any, cfg: BenchmarkConfig) -> dict[str, Any]:
    """``num`` timed repetitions of ``bs`` random prompts of ``isl`` tokens, ``osl`` new each."""
    import torch

    from ..runtime.sampling import SamplingParams

    vocab = int(llm.factory.vocab_size or 2)
    generator = torch.Generator().manual_seed(0)
    params = SamplingParams(max_tokens=cfg.osl, temperature=0.0, ignore_eos=True)

    def prompts() -> list[list[int]]:
        return torch.randint(0, vocab, (cfg.bs, cfg.isl), generator=generator).tolist()

    logger.info("benchmark: warm-up (isl=%d, osl=%d, bs=%d)", cfg.isl, cfg.osl, cfg.bs)
    llm.generate(prompts(), params)
    stats = llm.engine.stats
    latencies, ttfts, tokens = [], [], 0
    steps0, host0, forward0 = stats.steps, stats.host_s, stats.forward_s
    for index in range(cfg.num):
        start = time.perf_counter()
        outputs = llm.generate(prompts(), params)
        latencies.append(time.perf_counter() - start)
        tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        ttfts += [o.metrics.get("time_to_first_token_s", 0.0) for o in outputs]
        logger.info("benchmark: repetition %d/%d in %.3f s", index + 1, cfg.num, latencies[-1])
    steps = max(stats.steps - steps0, 1)
    total = sum(latencies)
    return {
        "model": llm.args.model,
        "device": str(llm.cm.device),
        "attn_backend": llm.args.attn_backend,
        "compile_backend": llm.args.compile_backend,
        "dtype": str(llm.factory.torch_dtype).replace("torch.", ""),
        "isl": cfg.isl,
        "osl": cfg.osl,
        "bs": cfg.bs,
        "num": cfg.num,
        "latency_s": {
            "mean": statistics.fmean(latencies),
            "median": statistics.median(latencies),
            "min": min(latencies),
            "max": max(latencies),
        },
        "time_to_first_token_s_mean": statistics.fmean(ttfts),
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / total if total else 0.0,
        "steps": steps,
        "time_per_step_ms": 1e3 * total / steps,
        "host_time_per_step_ms": 1e3 * (stats.host_s - host0) / steps,
        "forward_sample_time_per_step_ms": 1e3 * (stats.forward_s - forward0) / steps,
    }


@tool_main
def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        print(f"usage: {PROG} [options]\n\n{__doc__}\n{cli_help_text(GROUPS, FLAGS)}")
        return EXIT_OK
    args, prompt_cfg, bench_cfg, dry_run = resolve(argv)
    if dry_run:
        print_resolved_config(args)
        print(f"# prompt: {prompt_cfg.model_dump()}")
        print(f"# benchmark: {bench_cfg.model_dump()}")
        return EXIT_OK

    from ..runtime.llm import LLM

    start = time.perf_counter()
    with LLM.from_args(args) as llm:
        logger.info("build done in %.1f s", time.perf_counter() - start)
        outputs = llm.generate(prompt_cfg.prompts(), _sampling_params(prompt_cfg.sampling_kwargs()))
        failed = print_outputs(outputs)
        if bench_cfg.enabled:
            results = run_benchmark(llm, bench_cfg)
            print(json.dumps(results, indent=2))
            if bench_cfg.results_path:
                path = Path(bench_cfg.results_path)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(results, indent=2) + "\n")
                logger.info("benchmark results written to %s", path)
    if failed:
        print(
            f"error: {failed} of {len(outputs)} prompts failed (see their errors above).",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    return EXIT_OK


def print_outputs(outputs: list[Any]) -> int:
    """Print every prompt and completion; return how many prompts failed."""
    failed = 0
    for index, output in enumerate(outputs):
        completion = output.outputs[0]
        print(f"[{index}] prompt: {output.prompt!r}")
        print(
            f"[{index}] output: {completion.text!r} ({len(completion.token_ids)} "
            f"generated tokens, {completion.finish_reason})"
        )
        if completion.error:
            failed += 1
            print(f"[{index}] error: {completion.error}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
