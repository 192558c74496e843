"""The schema of ``models.yaml``: entries, architecture patterns, deployments, device settings.

Every model forbids unknown keys, so a typo (``yaml_extras``, ``max_seq_length``) is an error
that names its path instead of a setting that silently does nothing.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .conditions import check_versioned, parse_condition, resolve_versioned
from .static_batching import StaticBatching, check_unique_world_sizes

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


def _positive_int(name: str) -> Any:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        return value

    return check


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
    device_settings: DeviceSettings | None = Field(
        default=None,
        description="Settings for this deployment only (several per world size, told apart by "
        "max_seq_len / max_batch_size); they replace the entry's device_settings[world_size].",
    )

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.world_size, self.max_seq_len, self.max_batch_size)

    def __eq__(self, other: object) -> bool:  # a deployment is its (ws, len, batch) triple
        return isinstance(other, Deployment) and self.as_tuple() == other.as_tuple()

    def __hash__(self) -> int:
        return hash(self.as_tuple())

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
    when: str | None = Field(
        default=None,
        description="A package-version condition (conditions.py, e.g. torch_ge_2_12): in a "
        "list of device settings, the first whose condition holds applies (none: always).",
    )
    num_kv_pages: int | dict[str, int] | None = Field(
        default=None,
        description="KV-page budget: kv_cache_config.max_tokens = num_kv_pages * "
        "kv_cache_config.tokens_per_block (a fixed pool instead of the measured one). May be "
        "versioned: {torch_lt_2_12: 2080, default: 8192} (conditions.py).",
    )
    max_num_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Token budget of one step (the chunked-prefill budget): max_num_tokens.",
    )

    @field_validator("when")
    @classmethod
    def _check_when(cls, when: str | None) -> str | None:
        if when is not None:
            parse_condition(when)
        return when

    @field_validator("num_kv_pages")
    @classmethod
    def _check_pages(cls, value: Any) -> Any:
        return None if value is None else check_versioned(value, _positive_int("num_kv_pages"))

    def resolved_num_kv_pages(self) -> tuple[int | None, str]:
        """The page budget in effect and why (a versioned value picks by condition)."""
        if self.num_kv_pages is None:
            return None, "unset"
        return resolve_versioned(self.num_kv_pages)

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
        default_factory=list,
        description="File names in configs/, merged in order (a later file wins).",
    )
    ad_defaults: list[str] = Field(
        default_factory=list,
        description="Format 2.0 (layout C): internal files, merged first (ad_defaults/ or "
        "configs/).",
    )
    user_configs: list[str] = Field(
        default_factory=list,
        description="Format 2.0 (layout C): user-facing files in configs/, merged after "
        "ad_defaults.",
    )
    world_size: int | None = Field(
        default=None,
        ge=1,
        description="Format 2.0: the entry's world size, applied over its files (None: the "
        "files decide, default 1).",
    )
    static_batching: list[StaticBatching] = Field(
        default_factory=list,
        description="Static (prefill-only) shapes per world size: warm-up and CUDA-graph "
        "capture sizes (static_batching.py).",
    )
    architecture: ArchitecturePattern | None = Field(
        default=None, description="Recognizes the checkpoint by its config (local directories)."
    )
    deployments: list[Deployment] = Field(
        default_factory=list, description="Known-good (world_size, max_seq_len, max_batch_size)."
    )
    device_settings: dict[int, list[DeviceSettings]] = Field(
        default_factory=dict,
        description="Per world size; applied to known-good deployments. A list (one mapping "
        "is a list of one): the first whose `when` condition holds applies.",
    )
    disabled_reason: str | None = Field(
        default=None,
        min_length=1,
        description="Why the entry cannot run yet (what is missing); None: enabled.",
    )

    _index: int = PrivateAttr(default=-1)  # position in models.yaml (set by the loader)

    @field_validator("yaml_extra", "ad_defaults", "user_configs")
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
    def _check_file_lists(self) -> RegistryEntry:
        if self.yaml_extra and (self.ad_defaults or self.user_configs):
            raise ValueError(
                "use either yaml_extra or ad_defaults / user_configs (format 2.0 layout C), "
                "not both"
            )
        if not self.files:
            raise ValueError("lists no files: give yaml_extra (or ad_defaults / user_configs)")
        repeated = sorted({f for f in self.files if self.files.count(f) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        check_unique_world_sizes(self.static_batching)
        return self

    @field_validator("device_settings", mode="before")
    @classmethod
    def _one_as_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return value

    @property
    def files(self) -> list[str]:
        """Every file of the entry in merge order: ad_defaults, user_configs, yaml_extra."""
        return [*self.ad_defaults, *self.user_configs, *self.yaml_extra]

    def all_device_settings(self) -> list[DeviceSettings]:
        """Every DeviceSettings of the entry (per world size, list items, per deployment)."""
        found: list[DeviceSettings] = []
        for value in self.device_settings.values():
            found += value
        found += [d.device_settings for d in self.deployments if d.device_settings]
        return found

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
            unconditional = [i for i, item in enumerate(settings) if item.when is None]
            if unconditional and unconditional[0] != len(settings) - 1:
                raise ValueError(
                    f"device_settings[{world_size}][{unconditional[0]}] has no `when` but "
                    "is not the last item: the items after it could never apply"
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

    version: Literal[1, "2.0"] = Field(
        description="Schema version: 1 (autodeploy's) or '2.0' (upstream AutoDeploy's format: "
        "per-entry world_size, ad_defaults, user_configs; unused files in configs/ allowed)."
    )
    templates_anchors: Any = Field(
        default=None,
        alias="_templates",
        description="Ignored: holds YAML anchors (&name) that entries reuse (*name, <<: *name).",
    )
    description: str = Field(default="", description="What this registry is for.")
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="Files in configs/ that no entry uses yet -> why (they are YAML-checked, "
        "not composed).",
    )
    models: list[RegistryEntry] = Field(description="The entries, in match-priority order.")

    @field_validator("version", mode="before")
    @classmethod
    def _version_spellings(cls, value: Any) -> Any:
        return "2.0" if value in (2, 2.0, "2") else value
