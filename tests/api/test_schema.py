"""The generated OpenAPI schema against authentik's (the compatibility target), and the committed copy."""

from typing import Any

import pytest
import yaml
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiYamlRenderer

from tests.helpers import ROOT

# authentik's published schema, cut to the token and event paths; origin in tests/reference/README.md.
REFERENCE = ROOT / "tests" / "reference" / "authentik-openapi-excerpt.yml"
COMMITTED = ROOT / "schema.yml"

# Every allowed difference, with its reason ("contract" is docs/contract.md). The README's "Schema differences"
# table mirrors this list.
OMITTED_OPERATIONS = {
    ("/events/events/", "post"): "events are append-only: only the service writes them (contract: Audit trail)",
    ("/events/events/{event_uuid}/", "put"): "events are never updated through the API (contract: Audit trail)",
    ("/events/events/{event_uuid}/", "patch"): "events are never updated through the API (contract: Audit trail)",
    ("/events/events/{event_uuid}/", "delete"): "events are deleted only by retention (contract: Audit trail)",
    ("/events/events/export/", "post"): "data exports are an enterprise feature outside this service",
    ("/events/events/stats/", "get"): "not in the contract (Audit trail); dashboards are out of scope",
    ("/events/events/top_per_user/", "get"): "not in the contract (Audit trail); dashboards are out of scope",
}
# Components only the omitted operations use.
OMITTED_COMPONENTS = {
    "EventRequest": "only the omitted event create/update operations take it",
    "PatchedEventRequest": "only the omitted event partial update takes it",
    "DataExport": "only the omitted export operation returns it",
    "ContentType": "only DataExport uses it",
    "EventStats": "only the omitted stats operation returns it",
    "EventTopPerUser": "only the omitted top_per_user operation returns it",
    "PartialUser": "only DataExport uses it",
}
# Query parameters of authentik's event filters that name objects this service does not have.
OMITTED_PARAMETERS = {
    "actions": "multi-value action filter; `action` (single) is supported",
    "brand_name": "no brands in this service",
    "context_authorized_app": "no applications in this service",
    "context_device": "no devices in this service",
}
# Enum values newer than the reference excerpt: actions of the newest authentik client (2026.8), whose
# generated enum rejects nothing it knows, so a client older than them is unaffected.
NEWER_ENUM_VALUES = {
    "EventActions": {
        "user_offboarded",
        "access_request_created",
        "access_request_approved",
        "access_request_denied",
        "access_request_revoked",
    },
}


def load_reference() -> dict[str, Any]:
    return yaml.safe_load(REFERENCE.read_text())


def generate() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


@pytest.fixture(scope="module")
def schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    return load_reference(), generate()


def deref(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        kind, name = schema["$ref"].split("/")[-2:]
        schema = spec["components"][kind][name]
    return schema


def shape(schema: dict[str, Any] | None) -> Any:
    """What a client's model depends on: types, formats, enums, nullability, references, required lists."""
    if schema is None:
        return None
    if "$ref" in schema:
        return {"ref": schema["$ref"].rsplit("/", 1)[-1]}
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return {**shape(schema["allOf"][0]), "readOnly": schema.get("readOnly", False)}
    result: dict[str, Any] = {
        key: schema[key] for key in ("type", "format", "nullable", "readOnly", "pattern", "maxLength") if key in schema
    }
    if "enum" in schema:
        result["enum"] = sorted(str(value) for value in schema["enum"] if value is not None)
    if "items" in schema:
        result["items"] = shape(schema["items"])
    if "properties" in schema:
        result["properties"] = {name: shape(prop) for name, prop in schema["properties"].items()}
        result["required"] = sorted(schema.get("required", []))
    return result


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): op
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    }


def parameters(op: dict[str, Any], spec: dict[str, Any]) -> dict[tuple[str, str], Any]:
    result = {}
    for param in op.get("parameters", []):
        param = deref(param, spec)
        result[(param["in"], param["name"])] = shape(param["schema"])
    return result


def request_ref(op: dict[str, Any]) -> Any:
    body = op.get("requestBody")
    if body is None:
        return None
    return shape(body["content"]["application/json"]["schema"]), bool(body.get("required", False))


def response_shapes(op: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for status, response in op["responses"].items():
        response = deref(response, spec)
        content = response.get("content", {}).get("application/json")
        result[status] = shape(content["schema"]) if content else None
    return result


def test_schema_lists_both_servers_and_the_authentik_scheme(schemas):
    _, generated = schemas
    assert [server["url"] for server in generated["servers"]] == ["/api/v3", "/"]
    assert generated["components"]["securitySchemes"]["authentik"] == {"type": "http", "scheme": "bearer"}


def test_every_reference_operation_exists_with_its_operation_id(schemas):
    reference, generated = schemas
    ours = operations(generated)
    for key, op in operations(reference).items():
        if key in OMITTED_OPERATIONS:
            assert key not in ours, f"{key} is listed as omitted but exists"
            continue
        assert key in ours, f"missing operation {key}"
        assert ours[key]["operationId"] == op["operationId"], key


def test_parameters_match(schemas):
    reference, generated = schemas
    ours = operations(generated)
    for key, op in operations(reference).items():
        if key in OMITTED_OPERATIONS:
            continue
        expected = {k: v for k, v in parameters(op, reference).items() if k[1] not in OMITTED_PARAMETERS}
        actual = parameters(ours[key], generated)
        for name, expected_shape in expected.items():
            assert name in actual, f"{key}: missing parameter {name}"
            if "ref" in expected_shape or "enum" in (expected_shape or {}):
                assert actual[name] == expected_shape, f"{key}: parameter {name}"
            else:
                assert actual[name].get("type") == expected_shape.get("type"), f"{key}: parameter {name} type"
                assert actual[name].get("format") == expected_shape.get("format"), f"{key}: parameter {name} format"


def test_request_and_response_schemas_match(schemas):
    reference, generated = schemas
    ours = operations(generated)
    for key, op in operations(reference).items():
        if key in OMITTED_OPERATIONS:
            continue
        assert request_ref(ours[key]) == request_ref(op), f"{key}: request body"
        expected = response_shapes(op, reference)
        actual = response_shapes(ours[key], generated)
        for status, expected_shape in expected.items():
            assert status in actual, f"{key}: missing response {status}"
            assert actual[status] == expected_shape, f"{key}: response {status}"


def test_set_key_documents_the_reference_statuses(schemas):
    reference, generated = schemas
    path, method = "/core/tokens/{identifier}/set_key/", "post"
    ours = generated["paths"][path][method]["responses"]
    theirs = reference["paths"][path][method]["responses"]
    assert set(ours) >= {"204", "400", "403", "404"}
    for status in ("204", "400", "404"):
        assert ours[status]["description"] == theirs[status]["description"]
    assert generated["paths"][path][method]["requestBody"]["required"] is True


def test_components_match(schemas):
    reference, generated = schemas
    for name, component in reference["components"]["schemas"].items():
        if name in OMITTED_COMPONENTS or name == "authentik":
            continue
        assert name in generated["components"]["schemas"], f"missing component {name}"
        ours = shape(generated["components"]["schemas"][name])
        theirs = shape(component)
        assert ours.get("type") == theirs.get("type"), name
        if "enum" in theirs:
            expected = sorted({*theirs["enum"], *NEWER_ENUM_VALUES.get(name, ())})
            assert ours["enum"] == expected, f"{name}: enum"
        if "properties" in theirs:
            assert ours["required"] == theirs["required"], f"{name}: required"
            for prop, prop_shape in theirs["properties"].items():
                assert prop in ours["properties"], f"{name}.{prop} missing"
                for aspect in ("type", "format", "nullable", "readOnly", "ref", "enum", "items"):
                    assert ours["properties"][prop].get(aspect) == prop_shape.get(aspect), f"{name}.{prop}: {aspect}"


def test_event_actions_are_those_of_the_newest_authentik_client(schemas):
    from authentik_client.models.event_actions import EventActions

    _, generated = schemas
    ours = generated["components"]["schemas"]["EventActions"]["enum"]
    assert ours == [action.value for action in EventActions]


def test_committed_schema_is_current():
    rendered = OpenApiYamlRenderer().render(generate(), renderer_context={}).decode()
    assert COMMITTED.exists(), "schema.yml is missing: run `make schema`"
    assert COMMITTED.read_text() == rendered, "schema.yml is stale: run `make schema` and commit it"
