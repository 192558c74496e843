"""Peak host memory of loading one rank's weights, for world sizes 1, 2 and 4.

    python tools/sharded_load_memory.py [--layers 8] [--hidden 1024] [--moe]

Saves an 8-layer random Llama (``--moe``: Mixtral, 8 experts, top-2; fp32 safetensors),
then, in a fresh process per (world, rank), builds that rank's sharded graph on meta and loads
the checkpoint. Reports the peak resident memory reached while loading minus the resident
memory just before it, next to the rank's parameter bytes. No process group is needed: loading
involves no collectives.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_rank(model_dir: str, world_size: int, rank: int) -> dict:
    from autodeploy.config import LlmArgs
    from autodeploy.models import create_factory
    from autodeploy.tools.dump_graph import select_transforms
    from autodeploy.transforms import InferenceOptimizer
    from autodeploy.transforms.interface import SharedConfig

    args = LlmArgs(model=model_dir, device="cpu", world_size=world_size)
    factory = create_factory(args)
    transforms = args.to_dict()["transforms"]
    shared = SharedConfig(local_rank=rank, rank=rank, world_size=world_size)
    upto = select_transforms(transforms, "sharding_transform_executor", [])
    gm = InferenceOptimizer(factory, upto, shared_config=shared, instruments=[])(None)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) := current RSS
    before = _status_bytes("VmRSS")
    load = {"load_weights": transforms["load_weights"]}
    gm = InferenceOptimizer(factory, load, shared_config=shared, instruments=[])(None, gm)
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's peak across fork + exec.
    peak = _status_bytes("VmHWM")
    params = sum(p.numel() * p.element_size() for p in gm.parameters())
    return {
        "world_size": world_size,
        "rank": rank,
        "param_bytes": params,
        "load_peak_bytes": peak - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--moe", action="store_true", help="Mixtral (8 experts) instead")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.measure:
        model_dir, world, rank = options.measure
        print(json.dumps(measure_rank(model_dir, int(world), int(rank))))
        return
    import torch
    import transformers

    moe = dict(num_local_experts=8, num_experts_per_tok=2) if options.moe else {}
    config_class = transformers.MixtralConfig if options.moe else transformers.LlamaConfig
    config = config_class(
        **moe,
        hidden_size=options.hidden,
        intermediate_size=options.hidden * 11 // 4,
        num_hidden_layers=options.layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    with tempfile.TemporaryDirectory() as model_dir:
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
        size = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
        print(
            f"checkpoint: {type(config).__name__}, {options.layers} layers, hidden "
            f"{options.hidden}, {size / 2**20:.0f} MiB"
        )
        print("world  rank  params MiB  load peak MiB")
        for world in (1, 2, 4):
            for rank in range(world):
                command = [sys.executable, __file__, "--measure", model_dir, str(world), str(rank)]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                print(
                    f"{world:5d}  {rank:4d}  {row['param_bytes'] / 2**20:10.0f}  "
                    f"{row['load_peak_bytes'] / 2**20:13.0f}"
                )


if __name__ == "__main__":
    main()
