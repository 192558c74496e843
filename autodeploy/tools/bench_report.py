"""What the benchmark prints and stamps on its records: versions, device name, the table."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

_PACKAGES = {"triton": "triton", "transformers": "transformers", "flashinfer": "flashinfer-python"}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment_info(device: torch.device) -> dict[str, Any]:
    """``versions`` (torch, triton, transformers, flashinfer or None) and ``gpu`` (the device
    name; on CPU the processor). Read from package metadata: nothing is imported or compiled."""
    versions = {"torch": torch.__version__}
    versions.update({name: _version(dist) for name, dist in _PACKAGES.items()})
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = f"cpu ({platform.processor() or platform.machine()})"
    return {"versions": versions, "gpu": gpu}


_COLUMNS = (
    ("model", "model", "{}"),
    ("system", "system", "{}"),
    ("batch", "batch", "{}"),
    ("ms/step", "ms_per_step", "{:.3f}"),
    ("tok/s", "decode_tok_s", "{:.0f}"),
    ("floor ms", "roofline_ms", "{:.3f}"),
    ("% floor", "pct_roofline", "{:.1f}"),
    ("host ms", "host_ms_per_step", "{:.3f}"),
    ("build s", "build_s", "{:.1f}"),
    ("peak GiB", "peak_mem_gib", "{:.1f}"),
)


def _cell(record: dict[str, Any], key: str, fmt: str) -> str:
    value = record.get(key)
    return "-" if value is None else fmt.format(value)


def _graphs(record: dict[str, Any]) -> str:
    stats = record.get("cuda_graph")
    if not stats:
        return "-"
    return f"{stats['replays']} replays / {stats['fallbacks']} fallbacks"


def format_table(records: list[dict[str, Any]]) -> str:
    """Fixed-width table of the records (failed systems listed with their error)."""
    header = [title for title, _, _ in _COLUMNS] + ["cuda graphs"]
    rows = [
        [_cell(r, key, fmt) for _, key, fmt in _COLUMNS] + [_graphs(r)]
        for r in records
        if "error" not in r
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    title = "  ".join(cell.ljust(width) for cell, width in zip(header, widths))
    lines = [title, "-" * len(title), *lines]
    for record in records:
        if "error" in record:
            lines.append(f"FAILED {record['model']} / {record['system']}: {record['error']}")
    return "\n".join(lines)


def one_line(record: dict[str, Any]) -> str:
    """The progress line for one record."""
    where = f"{record['model']} / {record['system']}"
    if "error" in record:
        return f"{where}: FAILED: {record['error']}"
    line = (
        f"{where} / batch {record['batch']}: {record['ms_per_step']:.3f} ms/step"
        f" ({_cell(record, 'pct_roofline', '{:.1f}')}% of the floor), build "
        f"{record['build_s']:.1f} s, peak {_cell(record, 'peak_mem_gib', '{:.1f}')} GiB"
    )
    if record.get("host_ms_per_step") is not None:
        line += f", host {record['host_ms_per_step']:.3f} ms/step"
    if record.get("greedy_match"):
        line += f", greedy match {record['greedy_match']} of {record['osl']}"
    return line
