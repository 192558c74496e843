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

- ``--yaml-extra A.yaml B.yaml``: experiment files (``autodeploy/config/experiment.py``), deep-
  merged in order: sections ``args`` / ``prompt`` / ``benchmark`` (and ``model``, ``dry_run``),
  or a plain LlmArgs file (= its ``args``). ``--args.yaml-extra C.yaml`` files are LlmArgs'
  own ``yaml_extra`` files. Both are read; precedence, highest first: command line, environment,
  experiment files, args.yaml_extra files, registry, default.yaml;

- ``--prompt.batch-size N`` (default 2): how many prompts; ``--prompt.queries`` (a string, a
  list of strings, token-id lists such as ``[[1,2,3],[4,5]]``, or one token-id list ``[1,2,3]``;
  default: built-in example prompts) is cycled or cut to the batch size;
  ``--prompt.sp-kwargs.<field>``: ``SamplingParams`` fields (default max_tokens=32, greedy).
- ``--benchmark.enabled``, ``.isl`` (input tokens), ``.osl`` (output tokens), ``.bs``
  (concurrent requests), ``.num`` (timed repetitions, after one warm-up), ``.results-path``
  (JSON written there; ``null`` to skip). Random prompt ids, ``ignore_eos``, greedy.
  ``max_seq_len`` is raised to ``isl + osl`` (and ``max_batch_size`` to ``bs``) unless set
  explicitly.
- ``--dry-run``: print the resolved configuration (args, prompt, benchmark) with the source of
  every value and the upstream keys that were mapped or are not used, and exit.

Exit status (the rule of every tool, ``autodeploy/utils/exit_codes.py``): 0 success; 2 bad input
or configuration, including a prompt that failed (e.g. longer than ``max_seq_len``); 1 an
internal error; 141 when the output pipe is closed.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Layer, LlmArgs, cli_help_text, parse_cli, print_resolved_config
from ..config.experiment import (
    BenchmarkConfig,
    PromptConfig,
    load_experiment_file,
    resolve_sections,
)
from ..config.report import format_values_with_sources
from ..utils.errors import ConfigError
from ..utils.exit_codes import EXIT_BAD_INPUT, EXIT_OK, tool_main
from ..utils.logger import logger
from ..utils.suggest import close_matches

PROG = "python -m autodeploy.tools.build_and_run"
GROUPS = ("prompt", "benchmark")
FLAGS = ("dry_run",)


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


def split_experiment_files(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take the top-level ``--yaml-extra`` files (experiment files) out of ``argv``.

    ``--args.yaml-extra`` stays in the rest: those are LlmArgs yaml_extra files.
    """
    files: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        name, has_inline, inline = token.partition("=")
        index += 1
        if name not in ("--yaml-extra", "--yaml_extra"):
            rest.append(token)
            continue
        if has_inline:
            files.append(inline)
            continue
        start = index
        while index < len(argv) and not argv[index].startswith("--"):
            files.append(argv[index])
            index += 1
        if index == start:
            raise ConfigError("--yaml-extra needs at least one file.")
    return files, rest


def resolve(argv: list[str] | None) -> tuple[LlmArgs, PromptConfig, BenchmarkConfig, bool]:
    """Parse and validate everything (no model is built)."""
    experiment = resolve_experiment(argv)
    return experiment.args, experiment.prompt, experiment.benchmark, experiment.dry_run


@dataclass
class Experiment:
    """Everything one run uses, with the sources of the prompt / benchmark values."""

    args: LlmArgs
    prompt: PromptConfig
    benchmark: BenchmarkConfig
    dry_run: bool
    section_sources: dict[str, str]


def resolve_experiment(argv: list[str] | None) -> Experiment:
    """The experiment of a command line (see autodeploy/config/experiment.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    file_names, rest = split_experiment_files(argv)
    parsed = parse_cli(rest, groups=GROUPS, flags=FLAGS)
    files = [load_experiment_file(name) for name in file_names]
    sections = resolve_sections(files, parsed)
    prompt, bench = sections.prompt, sections.benchmark
    _sampling_params(prompt.sampling_kwargs())  # fail early on bad sampling options
    cli_args = dict(parsed.get("args", {}))
    layers = [f.args for f in files]
    args = LlmArgs.from_cli(cli_args, experiment_layers=layers)
    if bench.enabled:
        raised = {}
        explicit = args.provenance()
        if args.max_seq_len < bench.isl + bench.osl and not _explicit(explicit, "max_seq_len"):
            raised["max_seq_len"] = bench.isl + bench.osl
        if args.max_batch_size < bench.bs and not _explicit(explicit, "max_batch_size"):
            raised["max_batch_size"] = bench.bs
        if raised:
            logger.info("raised for the benchmark: %s", raised)
            layers.append(Layer("benchmark", raised))
            args = LlmArgs.from_cli(cli_args, experiment_layers=layers)
        if args.max_seq_len < bench.isl + bench.osl:
            raise ConfigError(
                f"The benchmark needs isl + osl = {bench.isl + bench.osl} tokens per sequence "
                f"but max_seq_len={args.max_seq_len} was set explicitly (by "
                f"{args.provenance()['max_seq_len']}). Raise it or lower --benchmark.isl / "
                "--benchmark.osl."
            )
    return Experiment(args, prompt, bench, sections.dry_run, sections.sources)


def _explicit(sources: dict[str, str], key: str) -> bool:
    """Set by the user (a file, the environment, the command line), not by a default."""
    source = sources.get(key, "default")
    return source not in ("default", "default.yaml", "derived") and not source.startswith(
        "registry:"
    )


def print_experiment(experiment: Experiment) -> None:
    """``--dry-run``: every value of every section with the file (or default) that set it."""
    print("# args:")
    print_resolved_config(experiment.args)
    sections = {
        "prompt": experiment.prompt.model_dump(),
        "benchmark": experiment.benchmark.model_dump(),
    }
    print(format_values_with_sources(sections, experiment.section_sources), end="")


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
    experiment = resolve_experiment(argv)
    args, prompt_cfg, bench_cfg = experiment.args, experiment.prompt, experiment.benchmark
    if experiment.dry_run:
        print_experiment(experiment)
        return EXIT_OK

    from ..runtime.llm import LLM

    start = time.perf_counter()
    with LLM.from_args(args) as llm:
        logger.info("build done in %.1f s", time.perf_counter() - start)
        queries = prompt_cfg.prompts()
        outputs = llm.generate(queries, _sampling_params(prompt_cfg.sampling_kwargs()))
        failed = print_outputs(outputs, queries)
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


def print_outputs(outputs: list[Any], queries: list[Any]) -> int:
    """Print every prompt and completion; return how many prompts failed."""
    failed = 0
    for index, output in enumerate(outputs):
        completion = output.outputs[0]
        shown = output.prompt if output.prompt is not None else queries[index]
        print(f"[{index}] prompt: {shown!r}")
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
