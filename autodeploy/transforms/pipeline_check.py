"""Check an ordered pipeline against the facts its transforms declare, before anything runs.

For every enabled transform, in run order, and every fact it requires or uses:

1. every *enabled* transform that provides the fact must run before it (otherwise the later
   one's work would be missed, e.g. caches registered after they were allocated);
2. the fact must not have been invalidated since it was last provided;
3. a *required* fact must hold: provided by an enabled transform before it, or, when no
   transform of the pipeline provides it at all, by the module the caller passes in. A fact
   whose only providers are disabled does not hold (disabled transforms provide nothing).

Input facts (a model factory, a cache interface) come from the caller: ``given``.
The result is a list of lines ``transforms.<name>: <what is wrong and how to fix it>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from .facts import Fact
from .interface import Stages

if TYPE_CHECKING:
    from .base import BaseTransform


@dataclasses.dataclass(frozen=True)
class PipelineStep:
    """One configured transform in run order."""

    name: str
    transform: type[BaseTransform]
    stage: Stages
    enabled: bool

    def where(self) -> str:
        return f"{self.name} (stage {self.stage.value})"


def check_facts(steps: Sequence[PipelineStep], given: Collection[Fact]) -> list[str]:
    """Every violation of the rules in the module docstring, one line each."""
    providers: dict[Fact, list[int]] = {}
    for index, step in enumerate(steps):
        for fact in step.transform.provides:
            providers.setdefault(fact, []).append(index)
    holds: dict[Fact, int] = {}  # fact -> index of the step that provided it (-1: the input)
    for step in steps:
        for fact in (*step.transform.requires, *step.transform.uses):
            if not fact.is_input and fact not in providers:
                holds[fact] = -1
    invalidated: dict[Fact, int] = {}
    lines: list[str] = []
    for index, step in enumerate(steps):
        if not step.enabled:
            continue
        for fact in step.transform.requires:
            lines += _check_one(steps, index, fact, True, providers, holds, invalidated, given)
        for fact in step.transform.uses:
            lines += _check_one(steps, index, fact, False, providers, holds, invalidated, given)
        for fact in step.transform.invalidates:
            holds.pop(fact, None)
            invalidated[fact] = index
        for fact in step.transform.provides:
            holds[fact] = index
            invalidated.pop(fact, None)
    return lines


def _check_one(
    steps: Sequence[PipelineStep],
    index: int,
    fact: Fact,
    required: bool,
    providers: dict[Fact, list[int]],
    holds: dict[Fact, int],
    invalidated: dict[Fact, int],
    given: Collection[Fact],
) -> list[str]:
    step = steps[index]
    head = f"transforms.{step.name}: {step.where()}"
    verb = "requires" if required else "uses"
    if fact.is_input:
        if required and fact not in given:
            return [f"{head} needs a {fact.name} ({fact.meaning}): {fact.how_to_supply}."]
        return []
    later = [steps[j] for j in providers.get(fact, []) if j > index and steps[j].enabled]
    if later:
        other = later[0]
        order = (
            f"list {other.name} before {step.name} in the YAML"
            if other.stage == step.stage
            else f"{step.name} belongs in a stage after {other.stage.value}"
        )
        return [
            f"{head} {verb} {fact} ({fact.meaning}), which {other.where()} provides, but "
            f"{other.name} runs after {step.name}. {step.name} must run after {other.name}: "
            f"{order}."
        ]
    if fact in holds:
        return []
    if fact in invalidated:
        culprit = steps[invalidated[fact]]
        return [
            f"{head} {verb} {fact} ({fact.meaning}), but {culprit.where()} invalidates it "
            f"earlier. {step.name} must run before {culprit.name}."
        ]
    if not required:
        return []
    # Not held, not invalidated, no enabled provider: every provider listed is disabled.
    disabled = [steps[j].name for j in providers[fact]]
    one = len(disabled) == 1
    return [
        f"{head} requires {fact} ({fact.meaning}), which only {', '.join(disabled)} "
        f"provide{'s' if one else ''}, and {'it is' if one else 'they are'} disabled (a disabled "
        f"transform provides nothing). Enable {disabled[0]}, or disable {step.name} too."
    ]
