"""The policy file: its format, validation with errors that name the field, and reloading.

```yaml
default: allow                # what happens when no rule applies (allow | deny)
rules:
  - name: no-batch-to-db      # unique; named in logs and metrics
    action: deny              # allow | deny
    from:                     # any of these sources (omit: any source)
      - identity: spiffe://cluster.local/ns/batch/sa/worker
      - namespace: batch      # any service account of that namespace
        trustDomain: cluster.local   # optional with namespace (omit: any)
      - trustDomain: partner.example # a whole trust domain
    to:                       # any of these destinations (omit: any workload)
      - namespace: default    # every given field must match
        serviceAccount: db
        pod: pod-3
    ports: [5432, "8000-8100"]  # omit: any port
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smesh.errors import SmeshError
from smesh.identity.errors import InvalidSpiffeId
from smesh.identity.spiffe import SpiffeId, validate_trust_domain
from smesh.validation import UnknownKey, problem

log = logging.getLogger("smesh.policy")


class PolicyError(SmeshError):
    """The policy file is invalid; the message names the field."""

    exit_code = 2


class UnknownPolicyKey(PolicyError, UnknownKey):
    """The policy has a key smesh does not know (a typo, usually): the message names it,
    where it is, and the closest known key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Label = Annotated[
    str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
]


class Source(_Model):
    identity: str | None = None
    namespace: Label | None = None
    trust_domain: str | None = Field(default=None, alias="trustDomain")

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                SpiffeId.parse(value)
            except InvalidSpiffeId as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_trust_domain(value)
            except InvalidSpiffeId as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if self.identity is not None and (self.namespace or self.trust_domain):
            raise ValueError("identity cannot be combined with namespace or trustDomain")
        if self.identity is None and self.namespace is None and self.trust_domain is None:
            raise ValueError("give one of identity, namespace or trustDomain")
        return self

    def matches(self, source: SpiffeId) -> bool:
        if self.identity is not None:
            return str(source) == self.identity
        if self.trust_domain is not None and source.trust_domain != self.trust_domain:
            return False
        return self.namespace is None or source.namespace == self.namespace


class Destination(_Model):
    namespace: Label | None = None
    service_account: Label | None = Field(default=None, alias="serviceAccount")
    pod: Label | None = None

    @model_validator(mode="after")
    def _something(self) -> Destination:
        if self.namespace is None and self.service_account is None and self.pod is None:
            raise ValueError("give at least one of namespace, serviceAccount or pod")
        return self


class PortRange(_Model):
    first: int
    last: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last


def _port_range(value: Any) -> PortRange:
    if isinstance(value, bool):
        raise ValueError('a port is a number or a range like "8000-8100"')
    if isinstance(value, int):
        first = last = value
    elif isinstance(value, str):
        low, sep, high = value.partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise ValueError(f'{value!r} is not a port or a range like "8000-8100"') from None
    else:
        raise ValueError('a port is a number or a range like "8000-8100"')
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"{value!r} is not within 1-65535 (low-high)")
    return PortRange(first=first, last=last)


class Rule(_Model):
    # Not "(...)": those name what decides when no rule does, in smesh_policy_denials_total.
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^(]")]
    action: Literal["allow", "deny"]
    sources: tuple[Source, ...] = Field(default=(), alias="from")
    destinations: tuple[Destination, ...] = Field(default=(), alias="to")
    ports: tuple[PortRange, ...] = ()

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise ValueError("expected a list of ports")
        ranges = []
        for i, item in enumerate(value):
            try:
                ranges.append(_port_range(item))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return tuple(ranges)


class Policy(_Model):
    default: Literal["allow", "deny"] = "allow"
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}; names must be unique")
            seen.add(rule.name)
        return self


def parse(text: str, origin: str = "policy") -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{origin}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: expected a mapping with 'rules' (and optionally 'default')")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        found = problem(exc, Policy)
        if found.unknown_key is not None:
            raise UnknownPolicyKey(f"{origin}: {found}", found) from None
        raise PolicyError(f"{origin}: {found}") from None


def document(policy: Policy) -> dict[str, Any]:
    """The policy in its canonical form: the file format with every key spelled out, rules
    in their order (which names the rule a tie is reported under). Two files that differ
    only in comments, spacing, key order or port spelling have one document."""

    def ports(rule: Rule) -> list[int | str]:
        return [p.first if p.first == p.last else f"{p.first}-{p.last}" for p in rule.ports]

    return {
        "default": policy.default,
        "rules": [
            {
                "name": rule.name,
                "action": rule.action,
                "from": [s.model_dump(by_alias=True, exclude_none=True) for s in rule.sources],
                "to": [d.model_dump(by_alias=True, exclude_none=True) for d in rule.destinations],
                "ports": ports(rule),
            }
            for rule in policy.rules
        ],
    }


def digest(policy: Policy) -> str:
    """``sha256:HEX`` of the canonical document: what ``smesh status`` and ``smesh lab
    policy`` compare to tell which policy an agent holds."""
    text = json.dumps(document(policy), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def from_document(doc: Any, origin: str = "policy document") -> Policy:
    """A policy from its :func:`document` (an agent's ``/debug/policy``), validated as a file
    is but for rule names: those of AuthorizationPolicy objects (``NS/NAME#I``) may be
    longer than a file's own."""
    if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
        raise PolicyError(f"{origin}: expected a mapping with 'rules' (and optionally 'default')")
    rules = doc.get("rules", [])
    names = [r.get("name") if isinstance(r, dict) else None for r in rules]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise PolicyError(f"{origin}: every rule needs a unique name")
    placeholders = [{**r, "name": f"r{i}"} for i, r in enumerate(rules)]
    try:
        policy = Policy.model_validate({**doc, "rules": placeholders})
    except ValidationError as exc:
        raise PolicyError(f"{origin}: {problem(exc, Policy)}") from None
    named = tuple(
        r.model_copy(update={"name": n}) for r, n in zip(policy.rules, names, strict=True)
    )
    return policy.model_copy(update={"rules": named})


def load(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    return parse(text, str(path))


class PolicyStore:
    """The policy in force, reloadable without a restart; a bad file keeps the old policy.

    With AuthorizationPolicy objects (smesh.kubernetes.policies) the policy in force is the
    file's plus the objects' rules: an *overlay* combines the two whenever either changes
    (SIGHUP, or an object or pod event). Until the first overlay, ``pending`` says why no
    decision can be made yet, and connections are refused: a restarted agent must not admit
    what a deny policy it has not read yet forbids.
    """

    def __init__(self, path: Path | None, *, pending: str | None = None) -> None:
        self.path = path
        self.file_policy = load(path) if path is not None else Policy()
        self.policy = self.file_policy
        self.error: str | None = None  # the last reload's refusal, until one succeeds
        self.pending = pending
        self._overlay: Callable[[Policy], Policy] | None = None
        # What `smesh status` and `smesh lab policy` show (/debug/policy): the policy in
        # force, since when, and the last reload refused (kept after later successes, so
        # an operator can still see what went wrong and when).
        self.digest = digest(self.policy)
        self.file_digest = self.digest
        self.loaded_at = time.time()
        self.reloads = 0  # reloads attempted (SIGHUP): a caller waits for it to move
        self.last_refused: tuple[float, str] | None = None
        self.objects: tuple[str, ...] = ()  # AuthorizationPolicies (NS/NAME) in force
        self.on_reload: Callable[[bool], None] | None = None  # loaded or not: metrics

    def reload(self) -> bool:
        if self.path is None:
            self._refresh()
            return False
        self.reloads += 1
        try:
            self.file_policy = load(self.path)
        except PolicyError as exc:
            self.error = str(exc)
            self.last_refused = (time.time(), self.error)
            log.error("policy not reloaded, keeping the previous one: %s", exc)
            if self.on_reload is not None:
                self.on_reload(False)
            return False
        self.error = None
        self.file_digest = digest(self.file_policy)
        log.info(
            "policy reloaded from %s: %d rules, %s",
            self.path,
            len(self.file_policy.rules),
            self.file_digest,
        )
        self._refresh()
        self.loaded_at = time.time()  # reloaded, even if to what was in force
        if self.on_reload is not None:
            self.on_reload(True)
        return True

    def overlay(self, combine: Callable[[Policy], Policy]) -> None:
        """From now on the policy in force is ``combine(file policy)``; applied at once."""
        self._overlay = combine
        self.pending = None
        self._refresh()

    def _refresh(self) -> None:
        if self._overlay is not None:
            self.policy = self._overlay(self.file_policy)
        else:
            self.policy = self.file_policy
        now = digest(self.policy)
        if now != self.digest:
            self.digest, self.loaded_at = now, time.time()

    @property
    def name(self) -> str:
        """What the policy in force comes from: the file, and AuthorizationPolicy objects."""
        parts = [str(self.path)] if self.path is not None else []
        if self.objects:
            parts.append(f"AuthorizationPolicy {', '.join(self.objects)}")
        return " + ".join(parts) or "(none: default allow)"

    def describe(self) -> dict[str, Any]:
        """The policy in force and its history, as the agent's ``/debug/policy`` serves it."""
        refused = self.last_refused
        return {
            "name": self.name,
            "file": str(self.path) if self.path is not None else None,
            "objects": list(self.objects),
            "digest": self.digest,
            "file_digest": self.file_digest,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "pending": self.pending,
            "error": self.error,
            "last_refused": {"at": refused[0], "error": refused[1]} if refused else None,
            "rules": len(self.policy.rules),
            "default": self.policy.default,
            "policy": document(self.policy),
        }
