"""The FaceScan CRD: a valid CRD, whose schema refuses bad specs and whose defaults are
the operator's."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from facescan_operator.k8s.spec import CPU_PATTERN, GROUP, KIND, PLURAL, VERSION, FaceScanSpec

ROOT = Path(__file__).resolve().parents[3]
CRD = yaml.safe_load((ROOT / "crds" / "facescan.yaml").read_text())
EXAMPLE = yaml.safe_load((ROOT / "examples" / "facescan.yaml").read_text())


def schema() -> dict[str, Any]:
    version = next(v for v in CRD["spec"]["versions"] if v["name"] == VERSION)
    return _openapi_to_jsonschema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _openapi_to_jsonschema(node: Any) -> Any:
    # OpenAPI v3.0 booleans exclusiveMinimum/Maximum -> JSON Schema numbers; drop x- keys
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-")}
        if out.get("exclusiveMinimum") is True:
            out["exclusiveMinimum"] = out.pop("minimum")
        if out.get("exclusiveMaximum") is True:
            out["exclusiveMaximum"] = out.pop("maximum")
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_crd_is_a_valid_custom_resource_definition(version: str) -> None:
    kubernetes_validate.validate(CRD, version, strict=True)
    assert CRD["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert CRD["spec"]["names"]["kind"] == KIND


def test_the_example_is_accepted_by_the_schema_and_the_operator() -> None:
    jsonschema.validate(EXAMPLE, schema())
    FaceScanSpec.model_validate(EXAMPLE["spec"])


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (("spec", "batchSize"), 0, "minimum"),
        (("spec", "batchSize"), "ten", "is not of type"),
        (("spec", "cascade"), [{"model": "yolo"}], "is not one of"),
        (("spec", "cascade"), [{"model": "cnn", "scale": 1.5}], "maximum"),
        (("spec", "cascade"), [{"model": "cnn", "scale": 0}], "exclusiveMinimum"),
        (("spec", "library", "mountPath"), "relative/path", "does not match"),
        (("spec", "database"), {}, "'secretName' is a required property"),
        (("spec", "detector", "cpu"), "two", "does not match"),
        (("spec", "detector", "cpu"), "-1", "does not match"),
    ],
)
def test_bad_specs_are_refused_by_the_schema(
    path: tuple[str, ...], value: Any, complaint: str
) -> None:
    body = copy.deepcopy(EXAMPLE)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=complaint):
        jsonschema.validate(body, schema())


def test_crd_defaults_are_the_operators_defaults() -> None:
    spec_schema = schema()["properties"]["spec"]["properties"]
    parsed = FaceScanSpec.model_validate(
        {k: EXAMPLE["spec"][k] for k in ("database", "library", "detector")}
    )
    assert spec_schema["maxDimension"]["default"] == parsed.max_dimension
    assert spec_schema["batchSize"]["default"] == parsed.batch_size
    assert spec_schema["parallelism"]["default"] == parsed.parallelism
    assert spec_schema["leaseSeconds"]["default"] == parsed.lease_seconds
    assert spec_schema["imageTimeoutSeconds"]["default"] == parsed.image_timeout_seconds
    assert spec_schema["ttlSecondsAfterFinished"]["default"] == parsed.ttl_seconds_after_finished
    assert [(s["model"], s["scale"]) for s in spec_schema["cascade"]["default"]] == [
        (s.model, s.scale) for s in parsed.cascade
    ]
    retry = spec_schema["retryPolicy"]["properties"]
    assert retry["maxAttempts"]["default"] == parsed.retry_policy.max_attempts
    assert retry["backoffBaseSeconds"]["default"] == parsed.retry_policy.backoff_base_seconds
    assert retry["backoffCapSeconds"]["default"] == parsed.retry_policy.backoff_cap_seconds
    assert spec_schema["database"]["properties"]["key"]["default"] == parsed.database.key
    people = spec_schema["people"]["properties"]
    assert people["enabled"]["default"] is parsed.people.enabled
    assert people["syncIntervalSeconds"]["default"] == parsed.people.sync_interval_seconds
    cpu = spec_schema["detector"]["properties"]["cpu"]
    assert (cpu["default"], cpu["pattern"]) == (parsed.detector.cpu, CPU_PATTERN)


def test_a_cascade_step_no_pool_serves_is_refused_by_the_operator() -> None:
    body = copy.deepcopy(EXAMPLE["spec"])
    body["nodePools"] = [{"name": "cpu", "models": ["hog"]}]
    body["cascade"] = [{"model": "cnn", "scale": 1.0}]
    with pytest.raises(ValueError, match="no node pool serving 'cnn'"):
        FaceScanSpec.model_validate(body)
