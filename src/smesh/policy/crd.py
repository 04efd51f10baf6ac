"""AuthorizationPolicy objects (smesh.io/v1alpha1) → the :class:`~smesh.policy.rules.Policy`
that :func:`~smesh.policy.decide.decide` evaluates (sans-IO).

The decision code knows destinations by namespace, service account and pod name, not by
label; so a policy's label selector is resolved here against the pods of this node, the
only destinations an agent ever decides for. Each rule of an object becomes one
:class:`~smesh.policy.rules.Rule` named ``NAMESPACE/NAME#INDEX`` (in logs and in
``smesh_policy_denials_total``). What the objects mean (docs/policy-kubernetes.md):

- A policy applies to the pods its ``selector`` picks in its own namespace (no selector:
  the whole namespace). A policy in ``smesh-system`` applies mesh-wide: its selector picks
  pods of every namespace (no selector: every workload).
- ``DENY`` wins over ``ALLOW``; a workload that any ``ALLOW`` policy selects accepts only
  what some ``ALLOW`` rule matches — exactly the evaluation of the policy file.
- They add to the agent's ``policy:`` file, whose ``default`` stays in force.

The API server validates objects against the CRD's schema; they are validated again here,
because an object stored under an older or laxer schema (or by a cluster without CEL) must
not be half-applied: an object that does not validate is not applied at all, and its status
says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from smesh.policy.rules import Destination, Policy, PortRange, Rule, Source
from smesh.validation import describe

GROUP = "smesh.io"
VERSION = "v1alpha1"
KIND = "AuthorizationPolicy"
PLURAL = "authorizationpolicies"
#: A policy in this namespace applies to every namespace.
MESH_WIDE_NAMESPACE = "smesh-system"
APPLIED = "in force"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Requirement(_Model):
    key: Annotated[str, Field(min_length=1, max_length=317)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _values(self) -> Requirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError(
                "operators In and NotIn need values; Exists and DoesNotExist take none"
            )
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        found = self.key in labels and labels[self.key] in self.values
        return found if self.operator == "In" else not found


class Selector(_Model):
    """A metav1.LabelSelector; the empty one selects every pod, as in Kubernetes."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[Requirement, ...] = Field(default=(), alias="matchExpressions")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )


class PortSpec(_Model):
    port: Annotated[int, Field(ge=1, le=65535)]
    end_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(default=None, alias="endPort")

    @model_validator(mode="after")
    def _order(self) -> PortSpec:
        if self.end_port is not None and self.end_port < self.port:
            raise ValueError("endPort must not be below port")
        return self

    def range(self) -> PortRange:
        return PortRange(first=self.port, last=self.end_port or self.port)


class To(_Model):
    ports: Annotated[tuple[PortSpec, ...], Field(min_length=1, max_length=32)]


class PolicyRule(_Model):
    sources: Annotated[tuple[Source, ...], Field(min_length=1, max_length=64)] | None = Field(
        default=None, alias="from"
    )
    to: To | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> PolicyRule:
        if self.sources is None and self.to is None:
            raise ValueError("an empty rule would match every connection: give from, to or both")
        return self


class Spec(_Model):
    action: Literal["ALLOW", "DENY"]
    selector: Selector | None = None
    rules: Annotated[tuple[PolicyRule, ...], Field(min_length=1, max_length=32)]


@dataclass(frozen=True)
class PodLabels:
    """A pod of this node as a selector sees it."""

    namespace: str
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Outcome:
    """Whether this agent applied one object (generation), and what its status says."""

    namespace: str
    name: str
    uid: str
    generation: int
    applied: bool
    message: str


@dataclass(frozen=True)
class Translation:
    policy: Policy  # the file's policy with every applied object's rules added
    outcomes: tuple[Outcome, ...]


def _meta(obj: Mapping[str, Any]) -> tuple[str, str, str, int]:
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return (
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
        str(meta.get("uid") or ""),
        generation if isinstance(generation, int) else 0,
    )


def destinations(
    namespace: str, selector: Selector | None, pods: Iterable[PodLabels]
) -> tuple[Destination, ...] | None:
    """Whom a policy of *namespace* targets: None for every workload (a mesh-wide policy
    without a selector), else the destinations, possibly none (no pod of this node)."""
    mesh_wide = namespace == MESH_WIDE_NAMESPACE
    if selector is None:
        return None if mesh_wide else (Destination(namespace=namespace),)
    return tuple(
        Destination(namespace=p.namespace, pod=p.name)
        for p in sorted(pods, key=lambda p: (p.namespace, p.name))
        if (mesh_wide or p.namespace == namespace) and selector.matches(p.labels)
    )


def rules_of(namespace: str, name: str, spec: Spec, pods: Iterable[PodLabels]) -> list[Rule]:
    """The rules one object adds; none if its selector picks no pod of this node (a rule
    without destinations would target every workload)."""
    targets = destinations(namespace, spec.selector, pods)
    if targets == ():
        return []
    action: Literal["allow", "deny"] = "allow" if spec.action == "ALLOW" else "deny"
    # model_construct: every part is validated already, and the name may be longer than
    # the policy file allows its own rule names (a namespace and an object name).
    return [
        Rule.model_construct(
            name=f"{namespace}/{name}#{i}",
            action=action,
            sources=rule.sources or (),
            destinations=targets or (),
            ports=tuple(p.range() for p in rule.to.ports) if rule.to is not None else (),
        )
        for i, rule in enumerate(spec.rules)
    ]


def translate(
    objects: Iterable[Mapping[str, Any]], pods: Iterable[PodLabels], base: Policy | None = None
) -> Translation:
    """The policy in force on this node: *base* (the policy file's) plus every valid object's
    rules, and one :class:`Outcome` per object for its status."""
    base = base or Policy()
    pods = list(pods)
    rules = list(base.rules)
    taken = {rule.name for rule in rules}
    outcomes: list[Outcome] = []
    for obj in sorted(objects, key=_meta):
        namespace, name, uid, generation = _meta(obj)

        def outcome(applied: bool, message: str) -> Outcome:
            return Outcome(namespace, name, uid, generation, applied, message)  # noqa: B023

        try:
            spec = Spec.model_validate(obj.get("spec"))
        except ValidationError as exc:
            where = describe(exc, Spec).replace("(top level)", "spec", 1)
            where = where if where.startswith("spec") else f"spec.{where}"
            outcomes.append(outcome(False, f"not applied: {where}"))
            continue
        added = rules_of(namespace, name, spec, pods)
        clash = next((r.name for r in added if r.name in taken), None)
        if clash is not None:
            outcomes.append(
                outcome(False, f"not applied: the agent's policy file has a rule named {clash!r}")
            )
            continue
        rules.extend(added)
        taken.update(r.name for r in added)
        outcomes.append(outcome(True, APPLIED))
    return Translation(Policy(default=base.default, rules=tuple(rules)), tuple(outcomes))
