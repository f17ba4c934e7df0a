"""Fixtures: the agent contract, as the project's own code and as the official YAML.

* ``contract`` (session fixture): :class:`ProjectContract`, the project's own contract code
  (``elevenconv.testing._contract``, what the simulator enforces). Every test that checks
  messages uses it, so the whole suite runs in a fresh clone. ``validate_client(msg)`` /
  ``validate_server(msg)`` raise ``AssertionError`` listing every violation;
  ``client_errors`` / ``server_errors`` return them instead.
* ``yaml_contract`` (session fixture) and ``load_contract()`` (cached): :class:`Contract`,
  the official ``../shared/spec/agent.asyncapi.yaml`` as jsonschema validators, with the
  same methods plus schema access. Only the cross-check of our code against the YAML
  (``tests/testing/test_contract.py``) needs it; where the YAML is absent (a user's
  checkout) those tests skip with the reason, and in CI that is a failure instead.

How the AsyncAPI/OpenAPI dialect is read as JSON Schema 2020-12:

* ``nullable: true`` becomes ``anyOf: [<schema>, {"type": "null"}]``, also when it sits next
  to a ``$ref`` (``ErrorData.error_type``, ``MultimodalMessagePayload.text``/``file``).
* ``allOf`` members that each say ``additionalProperties: false`` (the MCP tool-call variants)
  would, read literally, reject every instance: the base forbids the variant's ``state`` and the
  variant forbids the base's fields. They are read as OpenAPI intends: the members' own
  ``additionalProperties: false`` is dropped and the ``allOf`` gets
  ``unevaluatedProperties: false`` (no fields beyond the union of the members').
* ``x-*`` extensions are dropped; ``format`` stays an annotation (not asserted).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import referencing.jsonschema
import yaml

from elevenconv.testing._contract import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    validate_client_message,
    validate_server_message,
)
from tests.conftest import IN_CI

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``ELEVENCONV_CONTRACT_YAML`` points the cross-check at another copy (e.g. a newer YAML).
SPEC_PATH = Path(
    os.environ.get("ELEVENCONV_CONTRACT_YAML")
    or REPO_ROOT / ".." / "shared" / "spec" / "agent.asyncapi.yaml"
)
MISSING_REASON = (
    "../shared/spec/agent.asyncapi.yaml not found (only present in the project's dev/CI layout)"
)

_BASE_URI = "urn:elevenconv:agent-contract"
_SCHEMAS_PTR = "#/components/schemas/"
_Schema = dict[str, Any]

# Keywords whose value is a map of name -> schema, a schema, or a list of schemas.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
_SCHEMA_VALUES = frozenset(
    {
        "items",
        "additionalProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "not",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
    }
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})


def to_json_schema(node: Any, schemas: Mapping[str, Any]) -> Any:
    """Convert one OpenAPI-flavoured schema node to JSON Schema 2020-12.

    ``schemas`` is the raw ``components.schemas`` (needed to look into ``allOf`` members
    that are ``$ref``s). ``$ref``s stay ``$ref``s, made absolute (``urn:elevenconv:...#/...``).
    """
    if not isinstance(node, dict):
        return node
    out: _Schema = {}
    for key, value in node.items():
        if key == "nullable" or key.startswith("x-"):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub, schemas) for name, sub in value.items()}
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = to_json_schema(value, schemas)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [to_json_schema(sub, schemas) for sub in value]
        elif key == "$ref" and isinstance(value, str) and value.startswith("#"):
            # Absolute, so that any subschema can be validated on its own.
            out[key] = _BASE_URI + value
        else:
            out[key] = copy.deepcopy(value)
    if "allOf" in out:
        out["allOf"], closed = _open_all_of_members(out["allOf"], schemas)
        if closed:
            out["unevaluatedProperties"] = False
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _open_all_of_members(
    members: list[_Schema], schemas: Mapping[str, Any]
) -> tuple[list[_Schema], bool]:
    """Drop ``additionalProperties: false`` from ``allOf`` members; say if any had it."""
    closed = False
    opened = []
    for member in members:
        target = member
        ref = member.get("$ref", "")
        if set(member) == {"$ref"} and ref.startswith(_BASE_URI + _SCHEMAS_PTR):
            target = to_json_schema(schemas[ref[len(_BASE_URI + _SCHEMAS_PTR) :]], schemas)
        if target.get("additionalProperties") is False:
            target = {k: v for k, v in target.items() if k != "additionalProperties"}
            closed = True
            opened.append(target)
        else:
            opened.append(member)
    return opened, closed


class ContractChecks:
    """What every contract fixture offers: validation of messages in both directions."""

    def client_errors(self, msg: object) -> list[str]:
        """Every violation of the contract by a client message (``[]`` if valid)."""
        raise NotImplementedError

    def server_errors(self, msg: object) -> list[str]:
        """Every violation of the contract by a server message (``[]`` if valid)."""
        raise NotImplementedError

    def validate_client(self, msg: dict[str, Any]) -> None:
        """Raise ``AssertionError`` listing every violation if ``msg`` breaks the contract."""
        errors = self.client_errors(msg)
        if errors:
            raise AssertionError("client message violates the contract:\n  " + "\n  ".join(errors))

    def validate_server(self, msg: dict[str, Any]) -> None:
        """Raise ``AssertionError`` listing every violation if ``msg`` breaks the contract."""
        errors = self.server_errors(msg)
        if errors:
            raise AssertionError("server message violates the contract:\n  " + "\n  ".join(errors))


class ProjectContract(ContractChecks):
    """The project's own contract code (``elevenconv.testing._contract``)."""

    def client_errors(self, msg: object) -> list[str]:
        return validate_client_message(msg)

    def server_errors(self, msg: object) -> list[str]:
        return validate_server_message(msg)

    def client_payload_names(self) -> list[str]:
        """Client message kinds (``user_audio_chunk`` for the typeless audio message)."""
        return sorted(CLIENT_MESSAGE_TYPES)

    def server_types(self) -> list[str]:
        """Server message ``type`` values of the contract (without our ``client_error``)."""
        return sorted(SERVER_MESSAGE_TYPES - {"client_error"})


class Contract(ContractChecks):
    """The YAML's messages, compiled to one jsonschema validator each."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        raw_schemas = document["components"]["schemas"]
        self.schemas: dict[str, _Schema] = {
            name: to_json_schema(schema, raw_schemas) for name, schema in raw_schemas.items()
        }
        resource = referencing.jsonschema.DRAFT202012.create_resource(
            {"components": {"schemas": self.schemas}}
        )
        self.registry: referencing.Registry[Any] = referencing.Registry().with_resource(
            _BASE_URI, resource
        )
        self._client = self._compile("subscribe")
        self._server = self._compile("publish")

    # -- building

    def _compile(self, operation: str) -> dict[str, tuple[str, jsonschema.Validator]]:
        """kind -> (payload schema name, validator) for one direction."""
        out: dict[str, tuple[str, jsonschema.Validator]] = {}
        messages = self.document["components"]["messages"]
        for ref in self.document["channels"]["AgentMessages"][operation]["message"]["oneOf"]:
            message = messages[ref["$ref"].rsplit("/", 1)[1]]
            name = message["payload"]["$ref"].rsplit("/", 1)[1]
            payload = self.schemas[name]
            kind = _const_type(payload)
            if kind is None:
                # The typeless message: audio, recognised by its one required field.
                assert payload.get("required") == ["user_audio_chunk"], name
                kind = "user_audio_chunk"
            assert kind not in out, f"two {operation} payloads for {kind!r}"
            out[kind] = (name, self.validator(self.ref(name)))
        return out

    def ref(self, name: str) -> _Schema:
        """A schema that is ``components.schemas[name]``, resolvable by :meth:`validator`."""
        return {"$ref": f"{_BASE_URI}{_SCHEMAS_PTR}{name}"}

    def validator(self, schema: _Schema) -> jsonschema.Validator:
        """A draft 2020-12 validator for ``schema`` (which may ``$ref`` into the contract)."""
        return jsonschema.Draft202012Validator(schema, registry=self.registry)

    def resolve(self, schema: _Schema) -> _Schema:
        """Follow ``$ref``s until a schema without one (its siblings are kept as ``allOf``)."""
        while "$ref" in schema:
            ref = schema["$ref"]
            pointer = ref[len(_BASE_URI) :] if ref.startswith(_BASE_URI) else ref
            assert pointer.startswith(_SCHEMAS_PTR), f"unsupported $ref {ref!r}"
            target = self.schemas[pointer[len(_SCHEMAS_PTR) :]]
            rest = {k: v for k, v in schema.items() if k not in ("$ref", "description")}
            schema = {"allOf": [target, rest]} if rest else target
        return schema

    # -- enumeration

    def client_payload_names(self) -> list[str]:
        """Client message kinds: each payload's ``type`` const, ``user_audio_chunk`` for audio."""
        return sorted(self._client)

    def server_types(self) -> list[str]:
        """Server message ``type`` consts."""
        return sorted(self._server)

    def client_schema(self, kind: str) -> _Schema:
        return self.ref(self._client[kind][0])

    def server_schema(self, type_: str) -> _Schema:
        return self.ref(self._server[type_][0])

    def enum(self, schema_name: str) -> list[Any]:
        """The ``enum`` of a named schema, e.g. ``enum("AudioFormat")``."""
        return list(self.document["components"]["schemas"][schema_name]["enum"])

    # -- validation

    def client_errors(self, msg: object) -> list[str]:
        """Every violation of the contract by a client message (``[]`` if valid)."""
        if not isinstance(msg, dict):
            return [f"not an object: {msg!r}"]
        if "type" in msg:
            kind = msg["type"]
        elif "user_audio_chunk" in msg:
            kind = "user_audio_chunk"
        else:
            return ["neither 'type' nor 'user_audio_chunk'"]
        if not isinstance(kind, str) or kind not in self._client:
            return [f"unknown client message type {kind!r}"]
        return _errors(self._client[kind][1], msg)

    def server_errors(self, msg: object) -> list[str]:
        """Every violation of the contract by a server message (``[]`` if valid)."""
        if not isinstance(msg, dict):
            return [f"not an object: {msg!r}"]
        kind = msg.get("type")
        if not isinstance(kind, str) or kind not in self._server:
            return [f"unknown server message type {kind!r}"]
        return _errors(self._server[kind][1], msg)


def _const_type(payload: _Schema) -> str | None:
    const = payload.get("properties", {}).get("type", {}).get("const")
    return const if isinstance(const, str) else None


def _errors(validator: jsonschema.Validator, msg: object) -> list[str]:
    def lines(errors: Iterator[jsonschema.ValidationError], depth: int) -> Iterator[str]:
        for e in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
            where = "/".join(str(p) for p in e.absolute_path) or "<root>"
            yield f"{'  ' * depth}{where}: {e.message}"
            if e.context and depth < 2:
                yield from lines(iter(e.context), depth + 1)

    return list(lines(validator.iter_errors(msg), 0))


def require_spec(path: Path, *, in_ci: bool) -> None:
    """Skip (fail in CI) unless the contract YAML exists at ``path``."""
    if path.is_file():
        return
    if in_ci:
        pytest.fail(f"{MISSING_REASON}; CI must have it", pytrace=False)
    pytest.skip(MISSING_REASON, allow_module_level=True)


class _Yaml12BoolLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but only ``true``/``false`` are booleans (as in YAML 1.2).

    PyYAML implements YAML 1.1, where a bare ``no`` is ``False``: the ``Language`` enum's
    Norwegian ``- no`` would load as a boolean. AsyncAPI tooling reads YAML 1.2.
    """


_Yaml12BoolLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12BoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@functools.cache
def _load(path: Path) -> Contract:
    with path.open(encoding="utf-8") as f:
        return Contract(yaml.load(f, Loader=_Yaml12BoolLoader))  # a SafeLoader subclass


def load_contract() -> Contract:
    """The contract, loaded once per process. Skips (fails in CI) if the YAML is absent."""
    require_spec(SPEC_PATH, in_ci=IN_CI)
    return _load(SPEC_PATH.resolve())


@pytest.fixture(scope="session")
def contract() -> ProjectContract:
    """The project's own contract code (see :class:`ProjectContract`); never skips."""
    return ProjectContract()


@pytest.fixture(scope="session")
def yaml_contract() -> Contract:
    """The official YAML as jsonschema validators (see :class:`Contract`); skips (fails in
    CI) where ``../shared/spec`` is absent."""
    return load_contract()
