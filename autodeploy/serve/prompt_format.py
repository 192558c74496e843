"""Prompt formats of llm-serve / RayLLM model files.

Two forms: a string holding ``{instruction}`` (the old ``generation.prompt_format``: it wraps
completion prompts and the user turns of a chat), or a mapping with ``system``, ``user``,
``assistant`` templates (``{instruction}``; ``system_in_user`` puts the system text into the
first user turn through ``{system}``), ``trailing_assistant`` (appended to start the reply) and
``default_system_message`` (the later ray-llm form).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..utils.errors import ConfigError

_KEYS = (
    "system",
    "user",
    "assistant",
    "trailing_assistant",
    "system_in_user",
    "default_system_message",
)


@dataclass(frozen=True)
class PromptFormat:
    user: str = "{instruction}"
    system: str = "{instruction}"
    assistant: str = "{instruction}"
    trailing_assistant: str = ""
    system_in_user: bool = False
    default_system_message: str = ""

    @classmethod
    def parse(cls, value: Any, where: str) -> PromptFormat:
        """A model file's ``prompt_format`` (string or mapping); ``where`` names it in errors."""
        if isinstance(value, str):
            if "{instruction}" not in value:
                raise ConfigError(
                    f"{where}: {value!r} has no '{{instruction}}' placeholder; add it where the "
                    "prompt goes."
                )
            return cls(user=value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a string or a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {list(_KEYS)}")
        fmt = cls(**value)
        if fmt.system_in_user and "{system}" not in fmt.user:
            raise ConfigError(f"{where}.user: system_in_user needs a '{{system}}' placeholder")
        return fmt

    def render_instruction(self, text: str) -> str:
        """A completion prompt -> the model's prompt (one user turn, then the reply start)."""
        return self._user(text, self.default_system_message) + self.trailing_assistant

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        parts: list[str] = []
        system = self.default_system_message
        pending_system = self.system_in_user
        for message in messages:
            role, content = message.get("role"), str(message.get("content") or "")
            if role in ("system", "developer"):
                system = content
                if not self.system_in_user:
                    parts.append(self.system.format(instruction=content))
            elif role == "assistant":
                parts.append(self.assistant.format(instruction=content))
            else:
                parts.append(self._user(content, system if pending_system else ""))
                pending_system = False
        return "".join(parts) + self.trailing_assistant

    def _user(self, text: str, system: str) -> str:
        if "{system}" in self.user:
            return self.user.format(instruction=text, system=system)
        return self.user.format(instruction=text)
