"""Order a pipeline within its stages by the facts its transforms declare, and check it, before
anything runs.

``order_within_stages`` puts every provider of a fact before the transforms of its stage that
need it (otherwise keeping the YAML order). Then ``check_facts``:

for every enabled transform, in run order, and every fact it requires or uses:

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


def order_within_stages(steps: Sequence[PipelineStep]) -> list[PipelineStep]:
    """``steps`` (already sorted by stage) with every enabled provider of a fact placed before
    the enabled transforms of its stage that require or use that fact; otherwise as given.

    A stable topological sort: at each position the earliest step whose providers in its stage
    are placed goes next, so an order that already respects the facts is kept as it is, and a
    plugin appended at the end of a stage still lands before the transforms that need it.
    Steps caught in a cycle keep their order; ``check_facts`` reports them.
    """
    ordered: list[PipelineStep] = []
    for stage in dict.fromkeys(step.stage for step in steps):
        remaining = [step for step in steps if step.stage == stage]
        while remaining:
            ready = next(
                (s for s in remaining if not any(_needs(s, other) for other in remaining)),
                remaining[0],  # a cycle: keep the given order
            )
            ordered.append(ready)
            remaining.remove(ready)
    return ordered


def _needs(consumer: PipelineStep, provider: PipelineStep) -> bool:
    """Whether enabled ``consumer`` requires or uses a fact that enabled ``provider`` provides."""
    if provider is consumer or not (provider.enabled and consumer.enabled):
        return False
    wanted = (*consumer.transform.requires, *consumer.transform.uses)
    return any(fact in wanted for fact in provider.transform.provides)


def check_facts(steps: Sequence[PipelineStep], given: Collection[Fact]) -> list[str]:
    """Every violation of the rules in the module docstring, one line each."""
    return _FactWalk(steps, given).run()


class _FactWalk:
    """Walks the steps in run order, tracking which facts hold and which were invalidated."""

    def __init__(self, steps: Sequence[PipelineStep], given: Collection[Fact]):
        self.steps = steps
        self.given = given
        self.providers: dict[Fact, list[int]] = {}  # fact -> every step providing it
        for index, step in enumerate(steps):
            for fact in step.transform.provides:
                self.providers.setdefault(fact, []).append(index)
        self.holds: set[Fact] = {  # facts no step provides: the caller's module has them
            fact
            for step in steps
            for fact in (*step.transform.requires, *step.transform.uses)
            if not fact.is_input and fact not in self.providers
        }
        self.invalidated_by: dict[Fact, int] = {}

    def run(self) -> list[str]:
        lines: list[str] = []
        for index, step in enumerate(self.steps):
            if not step.enabled:
                continue
            for fact in step.transform.requires:
                lines += self._check(index, fact, required=True)
            for fact in step.transform.uses:
                lines += self._check(index, fact, required=False)
            for fact in step.transform.invalidates:
                self.holds.discard(fact)
                self.invalidated_by[fact] = index
            for fact in step.transform.provides:
                self.holds.add(fact)
                self.invalidated_by.pop(fact, None)
        return lines

    def _check(self, index: int, fact: Fact, required: bool) -> list[str]:
        step = self.steps[index]
        head = f"transforms.{step.name}: {step.where()}"
        verb = "requires" if required else "uses"
        if fact.is_input:
            if required and fact not in self.given:
                return [fact.missing(head)]
            return []
        indices = self.providers.get(fact, [])
        later = [self.steps[j] for j in indices if j > index and self.steps[j].enabled]
        if later:
            other = later[0]
            order = (
                "their declarations form a cycle in this stage"
                if other.stage == step.stage
                else f"{step.name} belongs in a stage after {other.stage.value}"
            )
            return [
                f"{head} {verb} {fact} ({fact.meaning}), which {other.where()} provides, but "
                f"{other.name} runs after {step.name}. {step.name} must run after "
                f"{other.name}: {order}."
            ]
        if fact in self.holds:
            return []
        if fact in self.invalidated_by:
            culprit = self.steps[self.invalidated_by[fact]]
            return [
                f"{head} {verb} {fact} ({fact.meaning}), but {culprit.where()} invalidates it "
                f"earlier. {step.name} must run before {culprit.name}."
            ]
        if not required:
            return []
        # Not held, not invalidated, no enabled provider before it: the others are disabled.
        disabled = [self.steps[j].name for j in self.providers[fact] if j != index]
        if not disabled:  # it provides the fact itself (a refinement): the input must have it
            return []
        one = len(disabled) == 1
        return [
            f"{head} requires {fact} ({fact.meaning}), which only {', '.join(disabled)} "
            f"provide{'s' if one else ''}, and {'it is' if one else 'they are'} disabled (a "
            f"disabled transform provides nothing). Enable {disabled[0]}, or disable "
            f"{step.name} too."
        ]
