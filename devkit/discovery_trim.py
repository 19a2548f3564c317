"""Re-derive ``tests/data/discovery/`` from google-api-python-client's wheel: Google's discovery documents,
trimmed to the methods opcancel calls and the schemas those methods reach.

    python -m devkit.discovery_trim google_api_python_client-2.202.0-py3-none-any.whl

(``pip download google-api-python-client==2.202.0 --no-deps -d /tmp/wheel`` fetches the wheel.) Each
document keeps its ``rootUrl``, ``servicePath``, ``revision``, ``endpoints`` and global ``parameters``;
of its methods only those ``KEPT`` names; of its schemas only those the kept methods' ``request`` and
``response`` reach. Descriptions are left out, everything else is Google's text. The two Security
Command Center documents the cache lacks (v1p1beta1, v2) are written by hand and not touched here:
tests/data/discovery/README.md says where they come from.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import zipfile
from typing import Any

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "discovery"
_OPERATIONS = r"(projects|organizations)(\.(locations|regions))?\.operations\.(cancel|get|list)"
#: Document (service.version) -> the method ids kept, as a pattern after ``service.``.
KEPT = {
    "securitycenter.v1": _OPERATIONS,
    "securitycenter.v1beta1": _OPERATIONS,
    "aiplatform.v1": _OPERATIONS,
    "dataproc.v1": _OPERATIONS,
    "documentai.v1": _OPERATIONS,
    "documentai.v1beta3": _OPERATIONS,
    "translate.v3": _OPERATIONS,
    "translate.v3beta1": _OPERATIONS,
    "cloudbuild.v1": _OPERATIONS,
    "cloudbuild.v2": _OPERATIONS,
    "pubsub.v1": r"projects\.topics\.publish",
    "cloudtasks.v2": r"projects\.locations\.queues\.tasks\.(create|get)",
    "firestore.v1": r"projects\.databases\.documents\.(createDocument|get|commit|runQuery)",
}
#: The methods deploy.sh's definitions are sent to (through gcloud), kept in ``deploy/`` beside the others so
#: the function's conformance check never sees them: log-based metrics, dashboards, alerting policies.
DEPLOY_KEPT = {
    "logging.v2": r"projects\.metrics\.(create|update)",
    "monitoring.v1": r"projects\.dashboards\.(create|patch)",
    "monitoring.v3": r"projects\.alertPolicies\.(create|patch)",
}
_TOP = ("kind", "id", "name", "version", "revision", "rootUrl", "servicePath", "baseUrl", "mtlsRootUrl", "endpoints")


def trim(document: dict[str, Any], kept: str) -> dict[str, Any]:
    pattern = re.compile(re.escape(document["name"]) + r"\." + kept)
    out: dict[str, Any] = {key: document[key] for key in _TOP if key in document}
    out["endpoints"] = [
        {k: v for k, v in endpoint.items() if k != "description"} for endpoint in document.get("endpoints", [])
    ]
    out["parameters"] = _strip(document.get("parameters", {}))
    refs: set[str] = set()
    out["resources"] = _resources(document.get("resources", {}), pattern, refs)
    schemas = document.get("schemas", {})
    wanted: list[str] = sorted(refs)
    kept_schemas: dict[str, Any] = {}
    while wanted:
        name = wanted.pop()
        if name in kept_schemas:
            continue
        kept_schemas[name] = _strip(schemas[name])
        wanted.extend(_refs(schemas[name]) - set(kept_schemas))
    out["schemas"] = dict(sorted(kept_schemas.items()))
    return out


def _resources(resources: dict[str, Any], pattern: re.Pattern[str], refs: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, resource in resources.items():
        methods = {
            method_name: _strip(method)
            for method_name, method in resource.get("methods", {}).items()
            if pattern.fullmatch(method["id"])
        }
        for method in methods.values():
            for part in ("request", "response"):
                if part in method:
                    refs.add(method[part]["$ref"])
        children = _resources(resource.get("resources", {}), pattern, refs)
        if methods or children:
            out[name] = {**({"methods": methods} if methods else {}), **({"resources": children} if children else {})}
    return out


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        # A description is text; a dict under that key is a field named "description" (LogMetric has one).
        return {
            k: _strip(v)
            for k, v in value.items()
            if not (k == "enumDescriptions" or (k == "description" and isinstance(v, str)))
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        for v in value.values():
            found |= _refs(v)
        return found
    if isinstance(value, list):
        return set().union(*(_refs(v) for v in value)) if value else set()
    return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=pathlib.Path)
    wheel = parser.parse_args().wheel
    with zipfile.ZipFile(wheel) as archive:
        for out, kept_by_stem in ((OUT, KEPT), (OUT / "deploy", DEPLOY_KEPT)):
            for stem, kept in kept_by_stem.items():
                document = json.loads(archive.read(f"googleapiclient/discovery_cache/documents/{stem}.json"))
                text = json.dumps(trim(document, kept), indent=1, sort_keys=True) + "\n"
                out.mkdir(exist_ok=True)
                (out / f"{stem}.json").write_text(text, encoding="utf-8")
                print(f"{out.name}/{stem}: revision {document['revision']}")


if __name__ == "__main__":
    main()
