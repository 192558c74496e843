"""The schema of ``models.yaml``: entries, architecture patterns, deployments, device settings.

Every model forbids unknown keys, so a typo (``yaml_extras``, ``max_seq_length``) is an error
that names its path instead of a setting that silently does nothing.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

DEFAULT_CONFIG_ID = "default"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\.yaml$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Scalar = str | int | float | bool


def _check_pattern_value(key: str, value: Any, nested: bool) -> None:
    """Pattern values: scalars, lists of scalars, or (one level) a mapping of those."""
    if value is None:
        raise ValueError(
            f"{key}: null cannot be matched (a missing attribute and null look the same); "
            "leave the attribute out of the pattern instead"
        )
    if isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, list) and all(
        isinstance(v, (str, int, float, bool)) and v is not None for v in value
    ):
        return
    if isinstance(value, dict) and not nested:
        if not value:
            raise ValueError(f"{key}: an empty mapping matches nothing specific; remove it")
        for sub_key, sub_value in value.items():
            _check_attribute_name(f"{key}.{sub_key}", sub_key)
            _check_pattern_value(f"{key}.{sub_key}", sub_value, nested=True)
        return
    what = "a nested mapping (only one level is allowed)" if nested else type(value).__name__
    raise ValueError(
        f"{key}: expected a scalar, a list of scalars or a mapping of those, got {what}"
    )


def _check_attribute_name(path: str, name: Any) -> None:
    if not isinstance(name, str) or not _ATTRIBUTE.match(name):
        raise ValueError(f"{path}: {name!r} is not a config attribute name")


class ArchitecturePattern(BaseModel):
    """Which Hugging Face configs an entry stands for.

    ``model_type`` must equal the config's ``model_type``; every other key is an attribute that
    must exist on the config and be equal (``num_hidden_layers: 32``); a mapping value matches
    a nested config key by key (``text_config: {hidden_size: 2560}``). Attributes the pattern
    does not name are ignored.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    model_type: str = Field(min_length=1, description="HF config model_type, compared exactly.")

    @model_validator(mode="after")
    def _check_attributes(self) -> ArchitecturePattern:
        for key, value in self.attributes.items():
            _check_attribute_name(key, key)
            _check_pattern_value(key, value, nested=False)
        return self

    @property
    def attributes(self) -> dict[str, Any]:
        """The constraints besides model_type."""
        return dict(self.model_extra or {})

    @property
    def specificity(self) -> int:
        """How many values the pattern pins: model_type, each attribute, each nested key."""
        return 1 + sum(len(v) if isinstance(v, dict) else 1 for v in self.attributes.values())

    def describe(self) -> str:
        parts = [f"model_type={self.model_type}"]
        for key, value in self.attributes.items():
            if isinstance(value, dict):
                parts += [f"{key}.{k}={v}" for k, v in value.items()]
            else:
                parts.append(f"{key}={value}")
        return ", ".join(parts)


class Deployment(BaseModel):
    """A known-good (world_size, max_seq_len, max_batch_size) combination."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    world_size: int = Field(ge=1, description="Number of ranks.")
    max_seq_len: int = Field(ge=1, description="Longest sequence in tokens.")
    max_batch_size: int = Field(ge=1, description="Most sequences in one step.")

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.world_size, self.max_seq_len, self.max_batch_size)

    def describe(self) -> str:
        return (
            f"(world_size={self.world_size}, max_seq_len={self.max_seq_len}, "
            f"max_batch_size={self.max_batch_size})"
        )


class DeviceSettings(BaseModel):
    """Settings for one world size, applied when the deployment is a known-good one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: dict[str, Scalar] = Field(
        default_factory=dict,
        description="Environment variables, set only where the process does not set them yet.",
    )
    num_kv_pages: int | None = Field(
        default=None,
        ge=1,
        description="KV-page budget: kv_cache_config.max_tokens = num_kv_pages * "
        "kv_cache_config.tokens_per_block (a fixed pool instead of the measured one).",
    )
    max_num_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Token budget of one step (the chunked-prefill budget): max_num_tokens.",
    )

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, Scalar]) -> dict[str, Scalar]:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name.upper().startswith("AUTODEPLOY_"):
                raise ValueError(
                    f"{name}: AUTODEPLOY_* variables are configuration layers; put the setting "
                    "into a config file of the entry instead"
                )
        return env


class RegistryEntry(BaseModel):
    """One model (``name``) in one variant (``config_id``) and the files that configure it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Hugging Face id (org/name) of the checkpoint.")
    config_id: str = Field(
        default=DEFAULT_CONFIG_ID,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="Variant name; (name, config_id) is unique.",
    )
    yaml_extra: list[str] = Field(
        min_length=1,
        description="File names in configs/, merged in order (a later file wins).",
    )
    architecture: ArchitecturePattern | None = Field(
        default=None, description="Recognizes the checkpoint by its config (local directories)."
    )
    deployments: list[Deployment] = Field(
        default_factory=list, description="Known-good (world_size, max_seq_len, max_batch_size)."
    )
    device_settings: dict[int, DeviceSettings] = Field(
        default_factory=dict, description="Per world size; applied to known-good deployments."
    )
    disabled_reason: str | None = Field(
        default=None,
        min_length=1,
        description="Why the entry cannot run yet (what is missing); None: enabled.",
    )

    _index: int = PrivateAttr(default=-1)  # position in models.yaml (set by the loader)

    @field_validator("yaml_extra")
    @classmethod
    def _check_files(cls, files: list[str]) -> list[str]:
        for file in files:
            if not _FILE_NAME.match(file):
                raise ValueError(
                    f"{file!r} is not a file name in configs/ (a plain name ending in .yaml, "
                    "no directories)"
                )
        repeated = sorted({f for f in files if files.count(f) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return files

    @model_validator(mode="after")
    def _check_deployments(self) -> RegistryEntry:
        seen: set[tuple[int, int, int]] = set()
        for deployment in self.deployments:
            if deployment.as_tuple() in seen:
                raise ValueError(f"deployment {deployment.describe()} is listed twice")
            seen.add(deployment.as_tuple())
        world_sizes = {d.world_size for d in self.deployments}
        for world_size, settings in self.device_settings.items():
            if world_size not in world_sizes:
                listed = sorted(world_sizes) or "none"
                raise ValueError(
                    f"device_settings for world_size {world_size}, but no deployment has that "
                    f"world size (deployments list: {listed}); device settings only apply to "
                    "a known-good deployment"
                )
            if settings.max_num_tokens is not None:
                for d in self.deployments:
                    if d.world_size == world_size and settings.max_num_tokens < d.max_seq_len:
                        raise ValueError(
                            f"device_settings[{world_size}].max_num_tokens="
                            f"{settings.max_num_tokens} is smaller than max_seq_len="
                            f"{d.max_seq_len} of deployment {d.describe()}; a prompt of the "
                            "longest length must fit into one step"
                        )
        return self

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    @property
    def index(self) -> int:
        return self._index

    @property
    def label(self) -> str:
        """``name`` for the default variant, else ``name [config_id]``."""
        if self.config_id == DEFAULT_CONFIG_ID:
            return self.name
        return f"{self.name} [config_id={self.config_id}]"


class RegistryFile(BaseModel):
    """The top level of ``models.yaml``."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(description="Schema version of this file.")
    description: str = Field(default="", description="What this registry is for.")
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="Files in configs/ that no entry uses yet -> why (they are YAML-checked, "
        "not composed).",
    )
    models: list[RegistryEntry] = Field(description="The entries, in match-priority order.")
