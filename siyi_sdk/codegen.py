"""Typed client modules generated from a server's AsyncAPI document (``siyi codegen``).

`generate_client(document)` turns the document ``GET /asyncapi.json`` answers (see
`siyi_sdk.server.asyncapi`) into the source of one Python module:

- the models of the params, results and event data, written by ``datamodel-code-generator``
  (a JSON-Schema-to-pydantic generator) from the document's component schemas;
- a `Command` class per command the server answers (and per command it declared it sends),
  named after the command in CamelCase (``get_player_list`` -> ``GetPlayerList``);
- an `EventModel` class per event, whichever side sends it;
- an `Api` subclass with one typed method per command the server answers: keyword arguments
  for the params, the result's type as the return type, and an ``AsyncIterator`` of items for
  a streaming command.

The output depends on the document alone (no timestamp, the generator's options pinned), so
generating twice gives the same bytes; it is formatted by ruff. Both tools come with the
``codegen`` extra: ``pip install 'siyi-sdk[codegen]'``.

Why one module of about 440 lines: the generator walks the document's shape (servers,
operations, schemas) once and writes each part of the module in turn; the templates of the
generated code sit beside the walk that fills them.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import keyword
import logging
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Final

from .api.command import snake_case

__all__ = ["CodegenUnavailableError", "generate_client"]

logger = logging.getLogger(__name__)

EXTRA: Final = "codegen"
"""The extra that brings the generator and the formatter: ``siyi-sdk[codegen]``."""

_SCHEMAS = "#/components/schemas/"
_DEFS = "#/$defs/"
# Names the generated module itself uses: no model may take them.
_TAKEN: Final = frozenset(
    {"Annotated", "Any", "Api", "AsyncIterator", "BaseModel", "Command", "ConfigDict"}
    | {"EventModel", "Field", "RootModel", "TypeAliasType", "Literal", "Enum"}
)
# Attributes of `Api` a command's method must not hide.
_API_ATTRIBUTES: Final = frozenset(
    {"call", "collect", "on_event", "request", "send_event", "send_packet", "sender", "stream"}
    | {"timeout", "upload", "use"}
)


class CodegenUnavailableError(RuntimeError):
    """The ``codegen`` extra (datamodel-code-generator, ruff) is not installed."""


@dataclass
class _Command:
    name: str
    cls: str
    params: str
    result: str
    stream: bool
    answers: bool  # the server answers it (a method of the Api); else the server sends it
    summary: str


@dataclass
class _Event:
    name: str
    cls: str
    data: str
    summary: str


def _identifier(text: str) -> str:
    """A class name from any text: ``get_player_list`` -> ``GetPlayerList``."""
    words = re.split(r"[^0-9A-Za-z]+", text)
    camel = "".join(word[:1].upper() + word[1:] for word in words if word)
    if not camel or camel[0].isdigit():
        camel = "X" + camel
    return camel


def _method_name(command: str) -> str:
    name = re.sub(r"\W", "_", snake_case(command)).strip("_") or "command"
    if name[0].isdigit():
        name = "cmd_" + name
    while keyword.iskeyword(name) or name in _API_ATTRIBUTES or name.startswith("__"):
        name += "_"
    return name


def _refs(schema: Any) -> set[str]:
    """The names of the component schemas `schema` refers to."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_SCHEMAS):
                found.add(value[len(_SCHEMAS) :])
            else:
                found |= _refs(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= _refs(item)
    return found


def _rename_refs(schema: Any, names: dict[str, str]) -> Any:
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_SCHEMAS):
                value = _DEFS + names[value[len(_SCHEMAS) :]]
            out[key] = _rename_refs(value, names)
        return out
    if isinstance(schema, list):
        return [_rename_refs(item, names) for item in schema]
    return schema


def _resolve(document: dict[str, Any], ref: dict[str, Any]) -> Any:
    """What a local ``$ref`` of the document points at (the value itself when not a ref)."""
    pointer = ref.get("$ref") if isinstance(ref, dict) else None
    if not isinstance(pointer, str):
        return ref
    node: Any = document
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return _resolve(document, node)


def _schema_name(schema: Any) -> str:
    """The component a message's schema refers to (the document always names them)."""
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith(_SCHEMAS):
        raise ValueError(f"expected a reference to a component schema, got {schema!r}")
    return ref[len(_SCHEMAS) :]


def _payload(document: dict[str, Any], message_ref: dict[str, Any]) -> dict[str, Any]:
    message = _resolve(document, message_ref)
    payload: dict[str, Any] = _resolve(document, message["payload"])
    return payload


def _ok_branch(payload: dict[str, Any]) -> dict[str, Any]:
    for branch in payload.get("oneOf", [payload]):
        if branch.get("properties", {}).get("status", {}).get("const") == "ok":
            return dict(branch)
    raise ValueError("a reply without an ok Response")


class _Names:
    """Class names handed out once each."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)

    def claim(self, wanted: str, suffix: str) -> str:
        name = wanted
        while name in self.taken:
            name += suffix
        self.taken.add(name)
        return name


def _read(document: dict[str, Any]) -> tuple[list[_Command], list[_Event], set[str]]:
    """The commands and events of the document, and the component schemas they use."""
    commands: list[_Command] = []
    events: list[_Event] = []
    used: set[str] = set()
    for operation in document.get("operations", {}).values():
        kind = operation.get("x-siyi-kind")
        name = operation.get("x-siyi-name")
        if not isinstance(name, str) or kind not in ("command", "event"):
            continue  # the protocol's own packets
        summary = str(operation.get("summary", ""))
        payload = _payload(document, operation["messages"][0])
        if kind == "event":
            data = _schema_name(payload["properties"]["data"])
            events.append(_Event(name, "", data, summary))
            used.add(data)
            continue
        params = _schema_name(payload["properties"]["params"])
        stream = bool(operation.get("x-siyi-stream"))
        first = _payload(document, operation["reply"]["messages"][0])
        if stream:  # the chunk event's data holds one item
            item = first["properties"]["data"]["properties"]["data"]
        else:
            item = _ok_branch(first)["properties"]["data"]
        result = _schema_name(item)
        answers = operation.get("action") == "receive"
        command = _Command(name, "", params, result, stream, answers, summary)
        # A command both sides answer alike (the server sends it too) is one class.
        if not any(
            (c.name, c.params, c.result, c.stream) == (name, params, result, stream)
            for c in commands
        ):
            commands.append(command)
        used |= {params, result}
    # Everything the roots refer to, transitively.
    schemas = document.get("components", {}).get("schemas", {})
    pending = list(used)
    while pending:
        for ref in _refs(schemas[pending.pop()]):
            if ref not in used:
                used.add(ref)
                pending.append(ref)
    return commands, events, used


def _models(schema: dict[str, Any]) -> str:
    """The pydantic models of `schema`'s ``$defs``, written by datamodel-code-generator."""
    try:
        from datamodel_code_generator import generate
        from datamodel_code_generator.enums import DataModelType, InputFileType
        from datamodel_code_generator.format import Formatter, PythonVersion
    except ImportError as exc:
        raise CodegenUnavailableError(
            f"generating a client needs datamodel-code-generator: pip install 'siyi-sdk[{EXTRA}]'"
        ) from exc
    # Every option that shapes the output is pinned here, so the output depends on the
    # document alone (and on the generator's version).
    code = generate(
        json.dumps(schema),
        input_file_type=InputFileType.JsonSchema,
        output_model_type=DataModelType.PydanticV2BaseModel,
        target_python_version=PythonVersion.PY_311,
        disable_timestamp=True,
        skip_root_model=True,
        use_type_alias=True,
        use_annotated=True,
        use_schema_description=True,
        use_standard_collections=True,
        use_union_operator=True,
        strict_nullable=True,
        allow_population_by_field_name=True,
        keep_model_order=True,
        formatters=[Formatter.BUILTIN],
    )
    if not isinstance(code, str):
        raise TypeError("datamodel-code-generator wrote several modules")
    return code


def _ruff(source: str, *args: str) -> str:
    if importlib.util.find_spec("ruff") is None:
        raise CodegenUnavailableError(
            f"generating a client needs ruff to format it: pip install 'siyi-sdk[{EXTRA}]'"
        )
    # --isolated, and from an empty directory: the same bytes wherever it runs, whatever
    # configuration is around (which imports are first-party depends on where ruff runs).
    with tempfile.TemporaryDirectory() as empty:
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--isolated", "--target-version", "py311", "-"],
            input=source.encode(),
            capture_output=True,
            check=False,
            cwd=empty,
        )
    if done.returncode != 0:
        raise RuntimeError(f"ruff {args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


@dataclass
class _Param:
    name: str
    annotation: str
    default: str | None  # None: required
    optional: bool  # a default the signature cannot spell: None stands for it


def _fields(models: ast.Module, cls: str) -> tuple[list[_Param], bool, bool]:
    """A generated model's fields, whether it takes extra keys, and whether any has an alias."""
    for node in models.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            break
    else:
        raise ValueError(f"datamodel-code-generator wrote no class {cls}")
    params: list[_Param] = []
    extra = aliased = False
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "model_config" for t in stmt.targets
        ):
            extra = "extra='allow'" in ast.unparse(stmt.value)
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        annotation = stmt.annotation
        if (
            isinstance(annotation, ast.Subscript)
            and isinstance(annotation.value, ast.Name)
            and annotation.value.id == "Annotated"
            and isinstance(annotation.slice, ast.Tuple)
        ):
            aliased = aliased or "alias=" in ast.unparse(annotation.slice)
            annotation = annotation.slice.elts[0]
        text = ast.unparse(annotation)
        value = stmt.value
        if value is None:
            params.append(_Param(stmt.target.id, text, None, False))
        elif isinstance(value, ast.Call):  # Field(default_factory=...): no literal default
            params.append(_Param(stmt.target.id, f"{text} | None", "None", True))
        else:
            params.append(_Param(stmt.target.id, text, ast.unparse(value), False))
    return params, extra, aliased


def _docstring(text: str) -> str:
    """`text` (one line) as a docstring literal."""
    line = " ".join(text.split())
    escaped = line.replace("\\", "\\\\").replace('"""', '\\"""')
    if escaped.endswith('"'):
        escaped = escaped[:-1] + '\\"'
    return f'"""{escaped}"""'


def _method(command: _Command, models: ast.Module) -> str:
    fields, extra, aliased = _fields(models, command.params)
    signature = ["self"]
    if fields:
        signature.append("*")
    signature += [
        f"{p.name}: {p.annotation}" + ("" if p.default is None else f" = {p.default}")
        for p in fields
    ]
    if extra:
        signature.append("**extra: Any")
    body: list[str] = []
    plain = [p for p in fields if not p.optional]
    late = [p for p in fields if p.optional]
    if extra or aliased or late:
        items = ", ".join(f"{p.name!r}: {p.name}" for p in plain)
        body.append(f"values: dict[str, Any] = {{{items}}}")
        body += [f"if {p.name} is not None:\n    values[{p.name!r}] = {p.name}" for p in late]
        if extra:
            body.append("values.update(extra)")
        build = f"{command.cls}.model_validate(values)"
    else:
        build = f"{command.cls}(" + ", ".join(f"{p.name}={p.name}" for p in fields) + ")"
    doc = _docstring(command.summary or f"``{command.name}``.")
    if command.stream:
        head = f"def {_method_name(command.name)}({', '.join(signature)}) "
        head += f"-> AsyncIterator[{command.result}]:"
        body.append(f"return self.stream({build})")
    else:
        head = f"async def {_method_name(command.name)}({', '.join(signature)}) "
        head += f"-> {command.result}:"
        body.append(f"return await self.call({build})")
    lines = [head, f"    {doc}", *("    " + line.replace("\n", "\n    ") for line in body)]
    return "\n".join("    " + line.replace("\n", "\n    ") for line in lines)


def generate_client(document: dict[str, Any], *, api_name: str = "GeneratedApi") -> str:
    """The source of a typed client module for the server `document` describes.

    Args:
        document: an AsyncAPI document as a siyi server serves it (``GET /asyncapi.json``).
        api_name: the name of the generated `Api` subclass.

    Returns:
        The module's source, formatted by ruff.

    Raises:
        CodegenUnavailableError: the ``codegen`` extra is not installed.
        ValueError: the document is not one a siyi server serves.
    """
    if not api_name.isidentifier() or keyword.iskeyword(api_name):
        raise ValueError(f"{api_name!r} is not a Python class name")
    commands, events, used = _read(document)
    names = _Names(set(_TAKEN) | {api_name})
    # Commands and events take their own names first; a schema that wanted one gets a suffix.
    for command in commands:
        command.cls = names.claim(_identifier(command.name), "Command")
    for event in events:
        event.cls = names.claim(_identifier(event.name), "Event")
    schemas = document.get("components", {}).get("schemas", {})
    renamed = {
        name: names.claim(_identifier(name), "Model")
        for name in sorted(used, key=lambda n: (n not in schemas, n))
    }
    defs = {renamed[name]: _rename_refs(copy.deepcopy(schemas[name]), renamed) for name in used}
    for command in commands:
        command.params, command.result = renamed[command.params], renamed[command.result]
    for event in events:
        event.data = renamed[event.data]
    models = _models(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": dict(sorted(defs.items())),
        }
    )
    tree = ast.parse(models)

    info = document.get("info", {})
    title = str(info.get("title", "siyi server"))
    version = str(info.get("version", ""))
    parts = [
        f'"""Typed client of {title} {version}: generated by ``siyi codegen`` from its AsyncAPI '
        "document.\n\nDo not edit: run ``siyi codegen`` again when the server's API changes.\n"
        '"""',
        "from __future__ import annotations",
        "from collections.abc import AsyncIterator",
        "from typing import Any",
        "from siyi_sdk.api import Api, Command, EventModel",
        # The models, without their header (imports stay: ruff sorts them with ours).
        models.split("from __future__ import annotations", 1)[1],
    ]
    for command in commands:
        stream = ", stream=True" if command.stream else ""
        parts.append(
            f"class {command.cls}(Command[{command.result}], {command.params}{stream}):\n"
            f"    {_docstring(command.summary or f'``{command.name}``.')}\n\n"
            f"    __command__ = {command.name!r}"
        )
    for event in events:
        parts.append(
            f"class {event.cls}(EventModel, {event.data}):\n"
            f"    {_docstring(event.summary or f'``{event.name}``.')}\n\n"
            f"    __event__ = {event.name!r}"
        )
    methods = [_method(c, tree) for c in commands if c.answers]
    parts.append(
        f"class {api_name}(Api):\n"
        f'    """The typed `Api` of {title}: one method per command."""\n\n' + "\n\n".join(methods)
    )
    source = "\n\n\n".join(parts) + "\n"
    # Sort and merge the imports (and drop those nothing uses), then format.
    source = _ruff(
        source, "check", "--fix", "--exit-zero", "--select", "I,F401", "--stdin-filename", "x.py"
    )
    return _ruff(source, "format", "--stdin-filename", "x.py")
