"""Show how a model is split over ranks, without starting any rank.

    python -m autodeploy.tools.explain_sharding --model M --world-size N [--rank R]
        [--yaml-extra a.yaml ...] [--args.transforms.detect_sharding.X=V ...]

Runs the pipeline up to the sharding stage for rank R (default 0) on the meta device (no
weights are read) and prints, per split layer: the strategy, the source that chose it
(manual / factory / heuristic), the local weight shape, the collective inserted and the weight
bytes on that rank; per MoE layer the strategy (``ep`` / ``ep x tp``), the experts the rank
holds and both local expert weights; then the layers left whole with the reason, and the
rank's total bytes (experts included).
"""

from __future__ import annotations

import sys
from typing import Any

from ..config import LlmArgs, cli_help_text, parse_cli
from ..models import create_factory
from ..transforms import InferenceOptimizer
from ..transforms.interface import SharedConfig
from ..transforms.library.sharding._report import format_plan
from ..transforms.library.sharding.sharding_transform_executor import PLAN_META_KEY
from ..utils.errors import ConfigError
from ..utils.exit_codes import EXIT_OK, tool_main
from .dump_graph import select_transforms

FLAGS = ("rank", "help")


def sharded_graph(args: LlmArgs, rank: int = 0) -> Any:
    """The graph after the sharding stage for ``rank`` (on meta: no weights are read)."""
    if not 0 <= rank < args.world_size:
        raise ConfigError(
            f"--rank {rank} is outside world_size={args.world_size} "
            f"(ranks 0..{args.world_size - 1})."
        )
    selected = select_transforms(
        args.to_dict()["transforms"], "sharding_transform_executor", disable=[]
    )
    shared = SharedConfig(
        local_rank=rank, rank=rank, world_size=args.world_size, strict=args.strict
    )
    return InferenceOptimizer(create_factory(args), selected, shared_config=shared)(None)


def explain(args: LlmArgs, rank: int = 0) -> str:
    """The plan table for ``rank`` of ``args.world_size``."""
    gm = sharded_graph(args, rank)
    plan = getattr(gm, "meta", {}).get(PLAN_META_KEY)
    if plan is None:
        return f"world_size={args.world_size}: nothing is split (every rank holds the whole model)."
    return format_plan(gm, plan)


@tool_main
def main(argv: list[str] | None = None) -> int:
    cli = parse_cli(argv, flags=FLAGS)
    if cli.get("help"):
        print(__doc__)
        print(cli_help_text(flags=FLAGS))
        return EXIT_OK
    args = LlmArgs.from_cli(cli["args"])
    print(explain(args, int(cli.get("rank") or 0)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
