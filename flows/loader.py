"""Flow files: YAML with line numbers, two-stage validation, `file:line: message` problems, the registry.

Stage one validates a file's shape with `flows.schema.Flow`; stage two (`check`) checks meaning:
expressions compile and use known names, templates exist and use known variables, and a few
"valid but wrong" patterns raise warnings. A file with errors is reported and skipped; the others load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from encore_retention.connectors import http as outbound
from encore_retention.core import resources
from encore_retention.core.settings import get_settings
from encore_retention.flows import expressions, fields, render
from encore_retention.flows.schema import (
    AccountInviteStep,
    CreateDiscountStep,
    DateTrigger,
    EventTrigger,
    Flow,
    HttpStep,
    IfStep,
    NotifyStep,
    ReviewLinkStep,
    SendEmailStep,
    SplitStep,
    WaitStep,
    format_duration,
)

log = logging.getLogger(__name__)

LIBRARY = resources.folder(__package__ or "encore_retention.flows", "library")
Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    """One finding about a flow file, printed as `file:line: message`."""

    file: str
    line: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}: {prefix}{self.message}"


@dataclass
class FlowFile:
    """A loaded flow: its key (file stem), model, raw data, line map and content digest."""

    key: str
    path: str
    flow: Flow
    data: dict[str, Any]
    lines: dict[Path_, int] = field(default_factory=dict)
    digest: str = ""
    templates: dict[str, str] = field(default_factory=dict)
    """The source of every template its emails use (layouts, includes, text twins): pinned with the version."""

    def line(self, path: Path_) -> int:
        """The line of the deepest known node on `path`."""
        return _line_of(self.lines, path)


# ---- YAML with lines -------------------------------------------------------------------------------


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], loader: yaml.SafeLoader) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), lines, loader)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), lines, loader)


def parse_yaml(text: str) -> tuple[Any, dict[Path_, int]]:
    """The document and a map from each key/index path to its 1-based line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        data = loader.construct_document(node)
        lines: dict[Path_, int] = {}
        _walk(node, (), lines, loader)
        return data, lines
    finally:
        loader.dispose()


def _resolve(lines: dict[Path_, int], loc: Path_) -> Path_:
    """Follow `loc` (a pydantic error location, which may hold union tags) as deep as the YAML goes.

    A location part may be a union tag rather than a key (`steps, 0, wait, wait, for`), so each part is
    either followed or skipped; the deepest path wins, and among equals the one reaching furthest in `loc`.
    """
    best: tuple[int, int, Path_] = (0, -1, ())

    def walk(index: int, path: Path_, last: int) -> None:
        nonlocal best
        if (len(path), last) > best[:2]:
            best = (len(path), last, path)
        if index == len(loc):
            return
        part = loc[index]
        for candidate in {part, _ALIASES.get(part, part)} if isinstance(part, str) else {part}:
            if path + (candidate,) in lines:
                walk(index + 1, path + (candidate,), index)
        walk(index + 1, path, last)

    walk(0, (), -1)
    return best[2]


def _error_line(lines: dict[Path_, int], data: Any, error: ErrorDetails) -> int:
    """The line of an error; an unknown key is pointed at itself rather than at its parent."""
    path = _resolve(lines, tuple(error["loc"]))
    if error["type"] in ("unknown_trigger", "unknown_step") and isinstance(error.get("input"), dict) and error["input"]:
        first = next(iter(error["input"]))
        return lines.get(path + (first,), lines.get(path, 1))
    return lines.get(path, 1)


def _line_of(lines: dict[Path_, int], loc: Path_) -> int:
    return lines.get(_resolve(lines, loc), 1)


_ALIASES = {"if_": "if", "else_": "else", "as_": "as", "from_": "from", "for_": "for", "json_": "json"}


# ---- loading ---------------------------------------------------------------------------------------


def load_text(text: str, file: str, key: str | None = None) -> tuple[FlowFile | None, list[Problem]]:
    """Validate one flow's text; the FlowFile is None when there are errors."""
    try:
        data, lines = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        return None, [Problem(file, line, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]
    if not isinstance(data, dict):
        return None, [Problem(file, 1, "a flow file is a mapping with name, trigger and steps")]
    try:
        flow = Flow.model_validate(data)
    except ValidationError as exc:
        problems = [
            Problem(file, _error_line(lines, data, err), _message(err, _resolve(lines, tuple(err["loc"]))))
            for err in exc.errors()
        ]
        problems += _check_despite_shape(data, lines, file)
        return None, sorted(_unique(problems), key=lambda p: p.line)
    # What a run stores: JSON-safe (a YAML date becomes its ISO text), and its digest names the version.
    stored = json.loads(json.dumps(data, sort_keys=True, default=str))
    loaded = FlowFile(key or Path(file).stem, file, flow, stored, lines)
    problems = check(loaded)
    if any(p.severity == "error" for p in problems):
        return None, problems
    # The version: the flow's text and its templates' sources, so a template edited makes a new one.
    version = json.dumps({"flow": stored, "templates": loaded.templates}, sort_keys=True)
    loaded.digest = hashlib.sha256(version.encode()).hexdigest()
    return loaded, problems


def _message(error: ErrorDetails, found: Path_) -> str:
    loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
    where = _ALIASES.get(loc[-1], loc[-1]) if loc else ""
    if error["type"].startswith("bad_"):
        keys = [str(p) for p in found if isinstance(p, str)]
        where = keys[-1] if keys else ""
    message = error["msg"]
    if error["type"] in ("missing",):
        return f"missing `{where}`"
    if error["type"] == "extra_forbidden":
        return f"unknown field `{where}`"
    if error["type"] == "literal_error" and where in ("event", "exit_on"):
        return f"unknown event type {error['input']!r} ({message.replace('Input should be', 'expected')})"
    if error["type"] == "literal_error":
        return f"{where}: unknown value {error['input']!r} ({message.replace('Input should be', 'expected')})"
    if error["type"] in ("unknown_step", "unknown_trigger", "several_steps") or not where:
        return message
    return f"{where}: {message}"


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    return [p for p in problems if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def load_file(path: Path) -> tuple[FlowFile | None, list[Problem]]:
    """Validate one flow file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(str(path), 1, f"cannot read: {exc}")]
    return load_text(text, str(path))


def flow_files(directory: Path) -> list[Path]:
    """The flow files of a folder, sorted."""
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))


def load_dir(directory: Path) -> tuple[list[FlowFile], list[Problem]]:
    """Every valid flow of a folder, and every problem found (bad files are skipped)."""
    flows: list[FlowFile] = []
    problems: list[Problem] = []
    if not directory.is_dir():
        return [], [Problem(str(directory), 1, "no such folder")]
    for path in flow_files(directory):
        loaded, found = load_file(path)
        problems.extend(found)
        if loaded is not None:
            flows.append(loaded)
    return flows, problems


# ---- stage two: meaning ----------------------------------------------------------------------------


def _as_names(steps: list[Any]) -> set[str]:
    """The names the discounts of a flow's steps are kept under (`create_discount`'s `as:`)."""
    names: set[str] = set()
    for step in steps:
        if isinstance(step, CreateDiscountStep):
            names.add(step.create_discount.as_)
        elif isinstance(step, IfStep | SplitStep):
            for _, nested in step.nested():
                names |= _as_names(nested)
    return names


def _link_names(steps: list[Any]) -> set[str]:
    """The names the links of a flow's steps are kept under (`account_invite`'s and `review_link`'s `as:`)."""
    names: set[str] = set()
    for step in steps:
        if isinstance(step, AccountInviteStep):
            names.add(step.account_invite.as_)
        elif isinstance(step, ReviewLinkStep):
            names.add(step.review_link.as_)
        elif isinstance(step, IfStep | SplitStep):
            for _, nested in step.nested():
                names |= _link_names(nested)
    return names


def split_problems(branches: list[tuple[Any, Any]]) -> list[tuple[Path_, str]]:
    """What is wrong with a split's (name, weight) branches as a whole, each problem with its path under the step.

    Weights are percentages: all given and adding up to 100, or none given (equal shares). Each branch
    has its own name, since a run's position and the results per branch name it. A name or weight that
    is wrong in itself (reported by the schema) is left out of these checks.
    """
    problems: list[tuple[Path_, str]] = []
    seen: set[str] = set()
    for index, (name, _) in enumerate(branches):
        if isinstance(name, str) and name in seen:
            problems.append((("split", index, "name"), f"branch name {name!r} is used twice in this split"))
        seen.add(name)
    weights = [_percentage(weight) for _, weight in branches]
    given = [weight for _, weight in branches if weight is not None]
    if given and len(given) < len(branches):
        missing = next(index for index, (_, weight) in enumerate(branches) if weight is None)
        problems.append((("split", missing), "give every branch of a split a weight, or none (for equal shares)"))
    elif given and all(w is not None for w in weights):
        total = sum((w for w in weights if w is not None), Decimal(0))
        if total != 100:
            listed = ", ".join(
                f"{name}: {w.normalize():f}" for (name, _), w in zip(branches, weights, strict=True) if w
            )
            adding = f"add up to {total.normalize():f} ({listed})"
            problems.append((("split",), f"a split's weights are percentages adding up to 100; these {adding}"))
    return problems


def _percentage(weight: Any) -> Decimal | None:
    """A branch's weight as a Decimal, None when it is missing or not a percentage above 0."""
    if isinstance(weight, int | float | Decimal) and not isinstance(weight, bool) and 0 < weight <= 100:
        return Decimal(str(weight))
    return None


def _raw_split_problems(raw: Any, path: Path_) -> list[tuple[Path_, str]]:
    """`split_problems` of a raw step (of a flow whose shape is wrong) if it is a split, and of the splits
    nested in it, each with its path."""
    if not isinstance(raw, dict):
        return []
    found: list[tuple[Path_, str]] = []
    nested: list[tuple[Path_, Any]] = [(path + (name,), raw.get(name)) for name in ("then", "else")]
    branches = raw.get("split")
    if isinstance(branches, list):
        pairs = [(b.get("name"), b.get("weight")) for b in branches if isinstance(b, dict)]
        found += [(path + where, message) for where, message in split_problems(pairs)]
        nested += [
            (path + ("split", n, "steps"), b.get("steps")) for n, b in enumerate(branches) if isinstance(b, dict)
        ]
    for base, steps in nested:
        for index, step in enumerate(steps if isinstance(steps, list) else []):
            found += _raw_split_problems(step, base + (index,))
    return found


def check(loaded: FlowFile) -> list[Problem]:
    """Check a validated flow's meaning: errors and warnings, each with its line."""
    return _check(loaded.flow, loaded.path, loaded.line, list(enumerate(loaded.flow.steps)), loaded.templates)


def _check_despite_shape(data: dict[str, Any], lines: dict[Path_, int], file: str) -> list[Problem]:
    """The meaning checks of a flow whose shape is wrong, over its parts that are valid on their own.

    So one run of lint reports a misspelt field in a condition beside a step with a bad duration.
    """
    conditions = data.get("conditions")
    conditions = [conditions] if isinstance(conditions, str) else conditions
    if not (isinstance(conditions, list) and all(isinstance(c, str) for c in conditions)):
        conditions = []
    raw_steps = data.get("steps")
    steps: list[tuple[int, Any]] = []
    split_checks: list[Problem] = []
    for index, raw in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        try:
            alone = Flow.model_validate({"name": "-", "trigger": {"event": "order.placed"}, "steps": [raw]})
        except ValidationError:  # its own errors are reported already; a split's whole is checked here
            split_checks += [
                Problem(file, _line_of(lines, path), message)
                for path, message in _raw_split_problems(raw, ("steps", index))
            ]
            continue
        steps.append((index, alone.steps[0]))
    kind = data.get("kind") if data.get("kind") in ("marketing", "transactional") else "marketing"
    parts = Flow.model_construct(
        name="-", kind=kind, trigger=None, conditions=conditions, exit_on=[], steps=[step for _, step in steps]
    )
    return _check(parts, file, lambda path: _line_of(lines, path), steps) + split_checks


def _check(
    flow: Flow, file: str, line: Any, top_steps: list[tuple[int, Any]], sources: dict[str, str] | None = None
) -> list[Problem]:
    discounts_named = _as_names(flow.steps)
    known = set(expressions.NAMES) | discounts_named | _link_names(flow.steps)
    problems: list[Problem] = []

    def add(path: Path_, message: str, severity: Literal["error", "warning"] = "error") -> None:
        problems.append(Problem(file, line(path), message, severity))

    def expression(path: Path_, source: str) -> None:
        try:
            expressions.compile_expression(source)
        except expressions.ExpressionError as exc:
            add(path, str(exc))
            return
        for name in sorted(expressions.names_in_expression(source) - known):
            add(path, f"undefined variable {name!r} in expression {source!r} (known: {', '.join(sorted(known))})")
        for _, name, attribute in fields.in_expression(source):
            if message := fields.problem(name, attribute, discounts_named):
                add(path, f"{message} in expression {source!r}")

    def inline(path: Path_, source: str | None) -> None:
        if not source:
            return
        try:
            expressions.compile_string(source)
        except expressions.ExpressionError as exc:
            add(path, str(exc))
            return
        for name in sorted(expressions.names_in_string(source) - known):
            add(path, f"undefined variable {name!r} in {source!r}")
        for _, name, attribute in fields.in_text(source):
            if message := fields.problem(name, attribute, discounts_named):
                add(path, f"{message} in {source!r}")

    for index, condition in enumerate(flow.conditions):
        expression(("conditions", index), condition)
    if (
        isinstance(flow.trigger, DateTrigger)
        and flow.trigger.yearly
        and flow.entry.once_per != "year"
        and not flow.entry.once_per_customer
    ):
        add(
            ("trigger",),
            f"a yearly date trigger ({flow.trigger.date}) without `entry: once_per: year` may run twice in a year",
            "warning",
        )
    for name in flow.trigger.events if isinstance(flow.trigger, EventTrigger) else ():
        if name in flow.exit_on:
            add(("exit_on",), f"{name} both starts and ends this flow; only other runs are ended", "warning")
    if flow.exit_scope == "order" and not flow.exit_on:
        add(("exit_scope",), "exit_scope: order has no effect without `exit_on`", "warning")
    if flow.marketing and flow.max_delay is not None and flow.frequency_cap and flow.max_delay < flow.frequency_cap:
        add(
            ("max_delay",),
            f"max_delay {format_duration(flow.max_delay)} is shorter than frequency_cap "
            f"{format_duration(flow.frequency_cap)}: an email the cap holds back is likely dropped, not sent later",
            "warning",
        )

    # discounts: name -> (expires_in, elapsed wait since it was created)
    def walk(steps: list[tuple[int, Any]], base: Path_, discounts: dict[str, tuple[timedelta, timedelta]]) -> None:
        for index, step in steps:
            path = base + (index,)
            if isinstance(step, WaitStep):
                waited = step.wait.for_ or timedelta(0)
                if step.wait.until is not None:
                    waited += timedelta(0)
                discounts.update({k: (exp, elapsed + waited) for k, (exp, elapsed) in discounts.items()})
            elif isinstance(step, CreateDiscountStep):
                discounts[step.create_discount.as_] = (step.create_discount.expires_in, timedelta(0))
            elif isinstance(step, IfStep):
                expression(path + ("if",), step.if_)
                walk(list(enumerate(step.then)), path + ("then",), dict(discounts))
                walk(list(enumerate(step.else_)), path + ("else",), dict(discounts))
            elif isinstance(step, SplitStep):
                for where, message in split_problems([(branch.name, branch.weight) for branch in step.split]):
                    add(path + where, message)
                for index_, branch in enumerate(step.split):
                    walk(list(enumerate(branch.steps)), path + ("split", index_, "steps"), dict(discounts))
            elif isinstance(step, HttpStep):
                for name, value in step.http.json_.items():
                    if isinstance(value, str):
                        inline(path + ("http", "json", name), value)

                refused = outbound.refused_without_resolving(step.http.url)
                if refused:
                    add(path + ("http", "url"), f"http: {refused}", "warning")
            elif isinstance(step, SendEmailStep):
                email = step.send_email
                for attr in ("subject", "preheader", "from_", "reply_to", "to"):
                    inline(path + ("send_email", _ALIASES.get(attr, attr)), getattr(email, attr))
                if email.to is not None and "{" in email.to:
                    add(
                        path + ("send_email", "to"),
                        f"to: {email.to!r} can render empty or not as an address; then the step fails (it never "
                        "goes to the customer instead); for the store's staff write `to: staff`",
                        "warning",
                    )
                used = _template_checks(
                    email.template,
                    path + ("send_email", "template"),
                    add,
                    known,
                    flow.marketing,
                    discounts_named,
                    sources,
                )
                used |= expressions.names_in_string(email.subject) if "{" in email.subject else set()
                late_codes(path, used, discounts)
            elif isinstance(step, NotifyStep):
                late_codes(path, notify_checks(path + ("notify",), step.notify), discounts)

    def late_codes(path: Path_, used: set[str], discounts: dict[str, tuple[timedelta, timedelta]]) -> None:
        """Warn about a code an email shows that expires before the email goes out."""
        for name, (expires_in, elapsed) in discounts.items():
            if name in used and elapsed >= expires_in:
                add(
                    path,
                    f"discount {name!r} expires ({_fmt(expires_in)}) before this email is sent "
                    f"({_fmt(elapsed)} after it is created)",
                    "warning",
                )

    def notify_checks(path: Path_, alert: Any) -> set[str]:
        """A staff alert's texts and template (which may read `body`; it is not marketing): the names it uses."""
        for attr in ("subject", "body", "reply_to"):
            inline(path + (attr,), getattr(alert, attr))
        used = _template_checks(
            alert.template, path + ("template",), add, known | {"body"}, False, discounts_named, sources
        )
        if alert.body and used and "body" not in used:
            add(path + ("body",), f"template {alert.template!r} does not show `body`", "warning")
        for source in (alert.subject, alert.body or ""):
            used |= expressions.names_in_string(source) if "{" in source else set()
        return used

    walk(top_steps, ("steps",), {})
    return problems


def _fmt(delta: timedelta) -> str:
    return format_duration(delta)


def _template_checks(
    name: str,
    path: Path_,
    add: Any,
    known: set[str],
    marketing: bool,
    discounts: set[str],
    sources: dict[str, str] | None = None,
) -> set[str]:
    if not render.exists(name):
        add(path, f"missing template {name!r} (looked in: {', '.join(str(p) for p in render.template_dirs())})")
        return set()
    trees: list[tuple[str, Any]] = []
    used, broken = render.check(name, trees, sources)
    twin = render.text_twin(name)
    if twin:
        twin_used, twin_broken = render.check(twin, trees, sources)
        used, broken = used | twin_used, broken + twin_broken
    for problem in broken:
        add(path, f"template {name!r} cannot be used: {problem}")
    if broken:
        return set()
    for file, tree in trees:
        for line, variable, attribute in fields.uses(tree):
            if message := fields.problem(variable, attribute, discounts):
                add(path, f"template {name!r}: {Path(file).name}:{line}: {message}")
    for variable in sorted(used - known):
        add(path, f"undefined variable {variable!r} in template {name!r} (known: {', '.join(sorted(known))})")
    if marketing and "unsubscribe_url" not in used:
        add(path, f"marketing email template {name!r} has no unsubscribe link (`{{{{ unsubscribe_url }}}}`)", "warning")
    return used


# ---- the registry the engine reads -----------------------------------------------------------------


def flows_dir() -> Path:
    """FLOWS_DIR, or the built-in library."""
    return get_settings().FLOWS_DIR or LIBRARY


@dataclass
class Registry:
    """The flows in effect: by key, by trigger event, and the date-triggered ones."""

    flows: dict[str, FlowFile]
    problems: list[Problem]
    present: frozenset[str] | None = None
    """The keys of every flow file in the folder, loaded or not; None when the folder couldn't be listed."""

    def removed(self, key: str) -> bool:
        """Whether a flow's file is gone from a folder that was listed (a file that fails to load is not gone)."""
        return self.present is not None and key not in self.present

    def for_event(self, event_type: str) -> list[FlowFile]:
        """Enabled flows started by an event type."""
        return [
            f
            for f in self.flows.values()
            if f.flow.enabled
            and not f.flow.retired
            and isinstance(f.flow.trigger, EventTrigger)
            and event_type in f.flow.trigger.events
        ]

    def exiting_on(self, event_type: str) -> list[FlowFile]:
        """Flows whose waiting runs end on an event type."""
        return [f for f in self.flows.values() if event_type in f.flow.exit_on]

    def dated(self) -> list[FlowFile]:
        """Enabled flows with a date trigger."""
        return [
            f
            for f in self.flows.values()
            if f.flow.enabled and not f.flow.retired and isinstance(f.flow.trigger, DateTrigger)
        ]


_cache: dict[str, tuple[tuple[Any, ...], Registry]] = {}


def _signature(directory: Path) -> tuple[Any, ...]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return ()
    return render.fingerprint() + tuple(
        (e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries if e.name.endswith((".yaml", ".yml"))
    )


def registry() -> Registry:
    """The current flows (reloaded when a flow file or a template changes); bad files are logged and skipped."""
    directory = flows_dir()
    signature = _signature(directory)
    cached = _cache.get(str(directory))
    if cached and cached[0] == signature:
        return cached[1]
    flows, problems = load_dir(directory)
    for problem in problems:
        (log.error if problem.severity == "error" else log.warning)("flow problem: %s", problem)
    try:
        present: frozenset[str] | None = frozenset(p.stem for p in flow_files(directory))
    except OSError:
        present = None
    current = Registry({f.key: f for f in flows}, problems, present)
    _cache[str(directory)] = (signature, current)
    return current


_by_digest: dict[str, Flow] = {}


def flow_from_data(data: dict[str, Any], digest: str) -> Flow:
    """The model of a flow version stored on a run (validated once per process)."""
    flow = _by_digest.get(digest)
    if flow is None:
        flow = _by_digest[digest] = Flow.model_validate(data)
    return flow
