"""Run lm-evaluation-harness on autodeploy: lm-eval's own command line, model ``autodeploy``.

::

    python -m autodeploy.tools.lm_eval --model autodeploy \\
        --model_args model=path/to/hf_dir,world_size=1,max_seq_len=4096 \\
        --tasks hellaswag,wikitext --output_path results/

Every option is lm-eval's (``--limit``, ``--log_samples``, ``--include_path``, ...); this tool
only registers the ``autodeploy`` model first (``autodeploy.integrations.lm_eval``, which
documents ``--model_args``).
"""

from __future__ import annotations

import sys

from ..utils.exit_codes import EXIT_OK, tool_main


@tool_main
def main(argv: list[str] | None = None) -> int:
    from lm_eval.__main__ import cli_evaluate

    import autodeploy.integrations.lm_eval  # noqa: F401  (registers --model autodeploy)

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
