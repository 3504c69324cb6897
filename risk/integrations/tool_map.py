"""How a named tool call becomes what the guard checks: an action type and the resources it touches.

One mapping serves the MCP gateway (a policy file's `tools:` section) and the framework integrations (the
`mapping` that `govern` and `govern_tools` take). It maps tool names to an action type and a resource:

    tools:
      write_file: {action_type: file_write, resource: "{path}"}
      send_money: {action_type: api_call, resource: "bank.payee/{recipient}"}
      update_scheduled_transaction:         # alternatives: the first whose arguments are all present
        action_type: api_call
        resource: ["bank.payee/{recipient}", "bank.scheduled/{id}"]
      get_balance: database_query           # an action type alone

In Python a tool maps to an ActionType, or to `(action type, resource)` where the resource is an argument
name (`"path"`, the same as the template `"{path}"`), a template, or a callable taking the arguments.

A tool that is not mapped, or is mapped without a resource or an action type, gets these defaults: the action
type its name suggests (`action_type_for`), and the resource in the first argument named like one
(`RESOURCE_ARGUMENTS`) that the call gives, else `tool/<name>`. An argument holding a list stands for one
resource per element, and every one of them is checked; an element that names nothing (blank, not text or a
number) refuses the call rather than being skipped. The integrations fill in the defaults of arguments a
call leaves out, from the tool's signature or schema, before a call is resolved.
"""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from risk.actions import ActionType
from risk.errors import PolicyError


def _vocabulary(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Checked in this order: a name with words of several kinds gets the most dangerous kind.
_NAME_WORDS: tuple[tuple[ActionType, frozenset[str]], ...] = (
    (
        ActionType.PERMISSION_CHANGE,
        _vocabulary("chmod chown grant revoke permission permissions role roles acl password invite"),
    ),
    (ActionType.CODE_EXECUTION, _vocabulary("exec execute eval code python javascript script notebook")),
    (ActionType.PROCESS_SPAWN, _vocabulary("shell bash sh command cmd spawn process subprocess terminal")),
)
_FILE_WORDS = _vocabulary("file files path dir directory folder")
_DATABASE_WORDS = _vocabulary("sql query db database table tables row rows record records")
_NETWORK_WORDS = _vocabulary("url http https web webpage page fetch browse download send email mail message post")
_WRITE_WORDS = _vocabulary("write create update edit save put append insert upsert set move rename upload modify")
_DELETE_WORDS = _vocabulary("delete remove rm unlink drop erase purge truncate")

# Argument names that usually hold what a call touches, most telling first.
RESOURCE_ARGUMENTS = (
    "path", "file_path", "filepath", "file", "filename", "url", "uri", "to", "recipient", "recipients",
    "email", "channel", "table", "resource",
)  # fmt: skip
MAX_RESOURCES_PER_CALL = 100

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def action_type_for(tool: str) -> ActionType:
    """The action type a tool's name suggests; CUSTOM when the name says nothing.

    >>> [action_type_for(n).value for n in ("read_file", "writeFile", "send_email", "run_sql", "list_tools")]
    ['file_read', 'file_write', 'network_request', 'database_query', 'custom']
    """
    words = set(_words(tool))
    for action_type, markers in _NAME_WORDS:
        if words & markers:
            return action_type
    changes, deletes = bool(words & _WRITE_WORDS), bool(words & _DELETE_WORDS)
    if words & _FILE_WORDS:
        return ActionType.FILE_DELETE if deletes else ActionType.FILE_WRITE if changes else ActionType.FILE_READ
    if words & _DATABASE_WORDS:
        return ActionType.DATABASE_WRITE if changes or deletes else ActionType.DATABASE_QUERY
    if words & _NETWORK_WORDS:
        return ActionType.NETWORK_REQUEST
    return ActionType.CUSTOM


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


class ResourceTemplate:
    """A resource built from a call's arguments: `{name}` is replaced by the argument's value.

    >>> ResourceTemplate("bank.payee/{recipient}").expand({"recipient": "CH93", "amount": 5})
    ['bank.payee/CH93']
    >>> ResourceTemplate("mail/{to}").expand({"to": ["a@x.example", "b@x.example"]})
    ['mail/a@x.example', 'mail/b@x.example']
    >>> ResourceTemplate("{path}").expand({}) is None
    True
    """

    def __init__(self, template: str) -> None:
        if not isinstance(template, str) or not template.strip():
            raise PolicyError(f"resource template {template!r} must be a non-empty string such as '{{path}}'")
        if "{" in _FIELD.sub("", template) or "}" in _FIELD.sub("", template):
            raise PolicyError(f"resource template {template!r}: fields are argument names in braces, like '{{path}}'")
        self.template = template
        self.fields = tuple(dict.fromkeys(_FIELD.findall(template)))

    def __str__(self) -> str:
        return self.template

    def expand(self, arguments: Mapping[str, Any]) -> list[str] | None:
        """The resources for these arguments; None when an argument it names is absent.

        Raises ValueError for an argument that is not text, a number or a list of them.
        """
        if any(arguments.get(f) is None for f in self.fields):
            return None
        choices = [_values(f"argument {f!r}", arguments[f]) for f in self.fields]
        combinations = list(itertools.islice(itertools.product(*choices), MAX_RESOURCES_PER_CALL + 1))
        if len(combinations) > MAX_RESOURCES_PER_CALL:
            raise ValueError(f"the call touches more than {MAX_RESOURCES_PER_CALL} resources")
        return [self._fill(dict(zip(self.fields, combination, strict=True))) for combination in combinations]

    def _fill(self, values: Mapping[str, str]) -> str:
        return _FIELD.sub(lambda m: values[m.group(1)], self.template)


class ComputedResource:
    """A resource computed by a function of a call's arguments, for what no template can say.

    >>> ComputedResource(lambda args: f"mail/{args['to'].lower()}").expand({"to": "Ann@X.example"})
    ['mail/ann@x.example']
    """

    fields: tuple[str, ...] = ()

    def __init__(self, compute: Callable[[Mapping[str, Any]], Any]) -> None:
        self.compute = compute

    def __str__(self) -> str:
        return f"{getattr(self.compute, '__qualname__', repr(self.compute))}(arguments)"

    def expand(self, arguments: Mapping[str, Any]) -> list[str] | None:
        """The resources the function returns (text, a number, a path or a list of them); None for None."""
        try:
            value = self.compute(arguments)
        except Exception as exc:  # the caller's function failed on these arguments: the call cannot be checked
            raise ValueError(f"the resource could not be computed: {exc!r}") from exc
        return None if value is None else _values(f"the resource {self}", value)


ResourceSource = ResourceTemplate | ComputedResource
# How Python code maps one tool: an action type, or (action type, argument name, template or callable).
ToolSpec = ActionType | str | tuple[ActionType | str, str | Callable[[Mapping[str, Any]], Any]]


def _values(what: str, value: Any) -> list[str]:
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError(f"{what} is an empty list")
    values = []
    for item in items:
        if isinstance(item, dict | list | tuple) or item is None:
            raise ValueError(f"{what} must be text, a number or a list of them, not {item!r}")
        # A path as bytes or a PathLike is the file it names, not its repr ("b'/etc/x'").
        text = os.fsdecode(item) if isinstance(item, bytes | os.PathLike) else str(item)
        if not text.strip():  # inside a template, "bank.payee/" would look like something to check
            raise ValueError(f"{what} is blank")
        values.append(text)
    return values


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as the guard sees it: one check per resource, all with the same payload."""

    tool: str
    action_type: ActionType
    resources: tuple[str, ...]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolRule:
    """What one mapped tool does; None and () fall back to the defaults."""

    action_type: ActionType | None = None
    resources: tuple[ResourceSource, ...] = ()


class ToolMap:
    """What each tool does, with defaults for the tools it does not map.

    >>> tools = ToolMap.from_config({"send_money": {"action_type": "api_call", "resource": "bank.payee/{recipient}"}})
    >>> call = tools.resolve("send_money", {"recipient": "CH93", "amount": 100})
    >>> call.action_type.value, call.resources
    ('api_call', ('bank.payee/CH93',))
    >>> tools.resolve("write_file", {"path": "/tmp/x", "content": "hi"}).resources
    ('/tmp/x',)
    """

    def __init__(self, rules: Mapping[str, ToolRule] | None = None) -> None:
        self.rules = dict(rules or {})

    @classmethod
    def from_config(cls, section: Any) -> ToolMap:
        """Validate a mapping of tool name to `{action_type, resource}`, an action type alone, or (from
        Python) `(action type, resource)`."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise PolicyError("tools: must map tool names to {action_type: ..., resource: ...}")
        rules = {}
        for name, entry in section.items():
            try:
                rules[str(name)] = _rule(entry)
            except (PolicyError, ValueError) as exc:
                raise PolicyError(f"tools.{name}: {exc}") from None
        return cls(rules)

    @classmethod
    def for_tools(cls, mapping: Mapping[str, ToolSpec] | None, tools: Mapping[str, Collection[str]]) -> ToolMap:
        """The mapping a framework integration takes, checked against the agent's tools (name to argument
        names): a tool or argument they do not have is a ValueError now, not a call misread later."""
        tool_map = cls.from_config(mapping)
        tool_map.check_against(tools)
        return tool_map

    def check_against(self, tools: Mapping[str, Collection[str]]) -> None:
        """ValueError if this maps a tool that `tools` (name to argument names) lacks, or an argument it lacks:
        such an entry would never apply, and the tool would be read by the defaults instead."""
        unknown = sorted(set(self.rules) - set(tools))
        if unknown:
            known = ", ".join(sorted(tools)) or "none"
            raise ValueError(
                f"the mapping names tools the agent does not have: {', '.join(unknown)}; its tools: {known}"
            )
        for name, rule in self.rules.items():
            missing = [f for source in rule.resources for f in source.fields if f not in tools[name]]
            if missing:
                known = ", ".join(sorted(tools[name])) or "none"
                raise ValueError(f"tool {name} has no argument {missing[0]!r}; its arguments: {known}")

    def resolve(self, tool: str, arguments: Mapping[str, Any]) -> ToolCall:
        """What `tool(**arguments)` does. Raises ValueError when no resource can be read from the arguments."""
        rule = self.rules.get(tool, ToolRule())
        action_type = rule.action_type or action_type_for(tool)
        payload = {"tool": tool, "args": dict(arguments)}
        templates = rule.resources or _default_templates(arguments)
        if not templates:  # nothing in the arguments names a resource: the tool itself is one
            return ToolCall(tool, action_type, (f"tool/{tool}",), payload)
        resources = next((r for t in templates if (r := t.expand(arguments)) is not None), None)
        if not resources:
            needed = " or ".join(repr(str(t)) for t in templates)
            raise ValueError(f"tool {tool!r}: the arguments do not fill its resource {needed}")
        if any(not r.strip() for r in resources):  # names nothing the guard could check: the call may not run
            raise ValueError(f"tool {tool!r}: a resource in its arguments is blank")
        return ToolCall(tool, action_type, tuple(resources), payload)


def _rule(entry: Any) -> ToolRule:
    """One tool's entry in any of the forms `ToolMap.from_config` accepts."""
    if isinstance(entry, tuple):  # the Python form: (action type, resource)
        if len(entry) != 2:
            raise PolicyError(f"{entry!r} must be (action type, resource)")
        action_type, resource = entry
        return ToolRule(ActionType.parse(action_type), (_source(resource),))
    if isinstance(entry, str):  # an action type alone
        return ToolRule(ActionType.parse(entry))
    if not isinstance(entry, Mapping):
        raise PolicyError("must be a mapping with action_type and/or resource")
    unknown = sorted(set(entry) - {"action_type", "resource"})
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(unknown)}; accepted: action_type, resource")
    action_type = ActionType.parse(entry["action_type"]) if "action_type" in entry else None
    return ToolRule(action_type, _templates(entry["resource"]) if "resource" in entry else ())


def _source(resource: Any) -> ResourceSource:
    """A resource given from Python: an argument name, a template or a callable."""
    if callable(resource):
        return ComputedResource(resource)
    if not isinstance(resource, str):
        raise PolicyError(f"the resource must be an argument name, a template or a callable, not {resource!r}")
    if "{" in resource:
        return ResourceTemplate(resource)
    if not resource.isidentifier():
        raise PolicyError(f"{resource!r} is not an argument name; pass a callable to compute the resource instead")
    return ResourceTemplate(f"{{{resource}}}")


def _templates(value: Any) -> tuple[ResourceTemplate, ...]:
    templates = [value] if isinstance(value, str) else value
    if not isinstance(templates, Sequence) or not templates:
        raise PolicyError("resource must be a template or a non-empty list of alternative templates")
    return tuple(ResourceTemplate(t) for t in templates)


def _default_templates(arguments: Mapping[str, Any]) -> tuple[ResourceTemplate, ...]:
    """The first argument named like a resource that the call gives, if any.

    Whatever it holds is what is checked: skipping one whose value looks odd (a blank element, a nested
    list) would check the harmless `tool/<name>` while the tool still acts on the value, so such a value
    refuses the call when it is expanded instead.
    """
    for name in RESOURCE_ARGUMENTS:
        if arguments.get(name) is not None:
            return (ResourceTemplate(f"{{{name}}}"),)
    return ()


def schema_defaults(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """The defaults a JSON schema of a tool's arguments declares (`properties.<name>.default`).

    A call that leaves out `path` still acts on its default: filled in, it is checked like a given one.

    >>> schema_defaults({"properties": {"path": {"type": "string", "default": "/etc/x"}, "text": {}}})
    {'path': '/etc/x'}
    """
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping):
        return {}
    return {
        name: spec["default"]
        for name, spec in properties.items()
        if isinstance(spec, Mapping) and "default" in spec and spec["default"] is not None
    }


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "object"), (type(None), "null"))  # fmt: skip


def conform(arguments: Mapping[str, Any], schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments as a tool with this JSON schema reads them; ValueError for one whose JSON type is not a
    type its schema declares.

    Tools validate their arguments with pydantic, which reads "01", " 1", 1.0 and true as the integer 1 and a
    UUID with braces or without hyphens as that UUID: checked as sent, a blocked `account/1` ran as
    `account/01`. Rather than mirror every coercion, an argument of another type than declared is refused
    (the model reads why and can send it again), an integral float for an integer is the integer, and a UUID
    (`format: uuid`) is written in its canonical form. An argument the schema does not declare is left out
    unless it admits `additionalProperties`: the tool ignores it, and checked, a `path` sent beside a tool's
    real `to` was the resource the default mapping checked. The tool still gets the arguments as sent.

    >>> schema = {"properties": {"id": {"type": "integer"}, "ids": {"type": "array", "items": {"type": "integer"}}}}
    >>> conform({"id": 1.0, "ids": [2, 3.0], "path": "decoy.txt"}, schema)
    {'id': 1, 'ids': [2, 3]}
    >>> optional_uuid = {"anyOf": [{"type": "null"}, {"type": "string", "format": "uuid"}]}
    >>> conform({"id": "2"}, {"properties": {"id": optional_uuid}})
    Traceback (most recent call last):
    ...
    ValueError: argument 'id' must be a UUID, as the tool's schema says, not '2'
    >>> conform({"id": "01"}, schema)
    Traceback (most recent call last):
    ...
    ValueError: argument 'id' must be integer, as the tool's schema says, not '01'
    """
    if not isinstance(schema, Mapping) or not isinstance(properties := schema.get("properties"), Mapping):
        return dict(arguments)
    extra = schema.get("additionalProperties")
    return {
        name: _conformed(name, value, properties.get(name))
        for name, value in arguments.items()
        if name in properties or extra is True or isinstance(extra, Mapping)
    }


def _conformed(name: str, value: Any, spec: Any) -> Any:
    if not isinstance(spec, Mapping):
        return value
    kind = _kind(value)
    declared = _declared_types(spec)
    if declared:
        if kind == "number" and "number" not in declared and "integer" in declared and value.is_integer():
            value, kind = int(value), "integer"
        if not _accepts(declared, kind):
            raise ValueError(f"argument {name!r} must be {' or '.join(sorted(declared))}, as the tool's schema "
                             f"says, not {value!r}")  # fmt: skip
    alternatives = spec.get("anyOf") or spec.get("oneOf")
    if "type" not in spec and isinstance(alternatives, list):  # Optional[UUID], Optional[list[int]], a union
        chosen = next((a for a in alternatives if isinstance(a, Mapping) and _accepts(_declared_types(a), kind)), None)
        return value if chosen is None else _conformed(name, value, chosen)
    if isinstance(value, str) and spec.get("format") == "uuid":
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"argument {name!r} must be a UUID, as the tool's schema says, not {value!r}") from None
    if isinstance(value, list) and isinstance(spec.get("items"), Mapping):
        return [_conformed(name, item, spec["items"]) for item in value]
    return value


def _kind(value: Any) -> str | None:
    return next((k for t, k in _JSON_TYPES if isinstance(value, t)), None)  # bool first: True is an int


def _accepts(declared: set[str], kind: str | None) -> bool:
    return kind in declared or (kind == "integer" and "number" in declared)


def _declared_types(spec: Mapping[str, Any]) -> set[str]:
    """The JSON types a property's schema allows (empty: it does not say, or says it in a way not read here)."""
    declared = spec.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {t for t in declared if isinstance(t, str)}
    alternatives = spec.get("anyOf") or spec.get("oneOf")
    if isinstance(alternatives, list) and alternatives:
        each = [_declared_types(a) if isinstance(a, Mapping) else set() for a in alternatives]
        if all(each):  # an alternative without a type (a reference, say) could be anything
            return set().union(*each)
    return set()
