"""The Kubernetes manifests of `deploy/k8s/`: rendered without a cluster or a kustomize binary, and
validated against the Kubernetes API's schemas (issue #36).

The manifests are a kustomize base with overlays (`kubectl apply -k deploy/k8s/overlays/prod`,
Argo CD and Flux read them as they are). CI has neither kubectl nor kustomize, and neither is on the
package index, so this renders the subset of kustomize the manifests use, and refuses any other
field of a kustomization rather than ignore it: `resources` (files and directories), `namespace`,
`nameSuffix` (with the `configurations` name references the release uses), `labels`, `images` and
`patches` (strategic merge, or JSON 6902 with a `target`). `kubectl kustomize` renders the same
objects (docs/OPERATIONS.md, "Kubernetes").

Validation: every object of a core kind against the `kubernetes-validate` package's bundled schemas
(strict: an unknown field is an error), KEDA's against `deploy/k8s/schemas/` (written from KEDA's
CRDs); an object of any other kind is an error.

    python -m devtools.deploy render prod     # the overlay's objects, as one YAML stream
    python -m devtools.deploy check           # every overlay rendered and validated (make deploy-check)
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "k8s"
OVERLAYS = DEPLOY / "overlays"
SCHEMAS = DEPLOY / "schemas"
KUBERNETES_VERSION = "1.33"
"""The Kubernetes minor the manifests are validated against (the oldest one they are meant for)."""

Resource = dict[str, Any]

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "nameSuffix",
    "labels",
    "images",
    "patches",
    "configurations",
}
MERGE_BY_NAME = {"containers", "initContainers", "env", "volumes", "volumeMounts"}
"""Lists a strategic merge patch merges item by item on `name` (their patchMergeKey in the API);
every other list is replaced, as kustomize does for them and for any custom resource."""
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "StorageClass"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
KIND_ORDER = ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "Service", "Deployment", "Job"]
"""Output order (kustomize's, for the kinds used here): what others refer to comes first."""


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not do, or does not hold together."""


def overlays() -> list[str]:
    return sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())


def render(directory: Path | str) -> list[Resource]:
    """The objects a kustomization directory (an overlay's name or a path) builds."""
    path = Path(directory)
    if not path.is_absolute() and not path.exists():
        path = OVERLAYS / path
    resources, _ = _build(path.resolve())
    return sorted(resources, key=_order)


def _order(resource: Resource) -> tuple[int, str, str]:
    kind = resource["kind"]
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return rank, kind, resource["metadata"]["name"]


def _load_yaml(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _build(directory: Path) -> tuple[list[Resource], list[dict[str, Any]]]:
    """(objects, name references) of one kustomization; references come up from its bases."""
    file = directory / "kustomization.yaml"
    if not file.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    (kustomization,) = _load_yaml(file)
    if unsupported := sorted(set(kustomization) - SUPPORTED):
        raise KustomizeError(f"{file}: {', '.join(unsupported)} not supported by devtools/deploy.py")
    resources: list[Resource] = []
    references: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            more, refs = _build(target)
            resources += more
            references += refs
        else:
            resources += _load_yaml(target)
    for entry in kustomization.get("configurations", []):
        (config,) = _load_yaml(directory / entry)
        if set(config) != {"nameReference"}:
            raise KustomizeError(f"{entry}: only nameReference configurations are supported")
        references += config["nameReference"]

    for patch in kustomization.get("patches", []):
        _apply_patch(resources, patch, directory)
    if namespace := kustomization.get("namespace"):
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    if suffix := kustomization.get("nameSuffix"):
        _rename(resources, references, suffix)
    for labels in kustomization.get("labels", []):
        _label(resources, labels)
    for image in kustomization.get("images", []):
        _set_image(resources, image)
    return resources, references


def _rename(resources: list[Resource], references: list[dict[str, Any]], suffix: str) -> None:
    renamed: dict[tuple[str, str], str] = {}
    for resource in resources:
        if resource["kind"] in ("ConfigMap", "Secret", "Service"):
            raise KustomizeError(f"nameSuffix on a {resource['kind']}: its references are not followed here")
        old = resource["metadata"]["name"]
        resource["metadata"]["name"] = old + suffix
        renamed[(resource["kind"], old)] = old + suffix
    for reference in references:
        for spec in reference["fieldSpecs"]:
            for resource in resources:
                if resource["kind"] != spec["kind"]:
                    continue
                *parents, leaf = spec["path"].split("/")
                node: Any = resource
                for key in parents:
                    node = node.get(key) if isinstance(node, dict) else None
                if isinstance(node, dict) and (reference["kind"], node.get(leaf)) in renamed:
                    node[leaf] = renamed[(reference["kind"], node[leaf])]


def _label(resources: list[Resource], labels: dict[str, Any]) -> None:
    unknown = set(labels) - {"pairs", "includeSelectors", "includeTemplates"}
    if unknown:
        raise KustomizeError(f"labels: {', '.join(sorted(unknown))} not supported")
    pairs = labels["pairs"]
    selectors = labels.get("includeSelectors", False)
    templates = selectors or labels.get("includeTemplates", False)
    for resource in resources:
        resource["metadata"].setdefault("labels", {}).update(pairs)
        spec = resource.get("spec", {})
        kind = resource["kind"]
        if templates and kind in POD_TEMPLATE_KINDS:
            spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if selectors and kind in ("Deployment", "StatefulSet", "DaemonSet"):
            spec["selector"].setdefault("matchLabels", {}).update(pairs)
        if selectors and kind == "PodDisruptionBudget" and "matchLabels" in spec.get("selector", {}):
            spec["selector"]["matchLabels"].update(pairs)
        if selectors and kind == "Service":
            spec.setdefault("selector", {}).update(pairs)


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    for resource in resources:
        if resource["kind"] not in POD_TEMPLATE_KINDS:
            continue
        pod = resource["spec"]["template"]["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag = re.match(r"^([^:@]+(?::\d+/[^:@]+)?)(.*)$", container["image"]).groups()  # type: ignore[union-attr]
            if name == image["name"]:
                new_tag = f":{image['newTag']}" if "newTag" in image else tag
                container["image"] = image.get("newName", name) + new_tag


def _apply_patch(resources: list[Resource], entry: dict[str, Any], directory: Path) -> None:
    if set(entry) - {"path", "patch", "target"}:
        raise KustomizeError(f"patches: only path, patch and target are supported: {entry}")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):  # JSON 6902: the target says where
        if not target:
            raise KustomizeError("a JSON 6902 patch needs a target")
        matched = [r for r in resources if _matches(r, target)]
        for resource in matched:
            for operation in body:
                _json_patch(resource, operation)
    else:
        target = target or {"kind": body["kind"], "name": body["metadata"]["name"]}
        matched = [r for r in resources if _matches(r, target)]
        for resource in matched:
            merged = _merge(resource, body)
            resource.clear()
            resource.update(merged)
    if not matched:
        raise KustomizeError(f"a patch matches nothing: {target}")


def _matches(resource: Resource, target: dict[str, str]) -> bool:
    if set(target) - {"kind", "name", "group", "version"}:
        raise KustomizeError(f"patch target: only kind and name are supported: {target}")
    name = target.get("name")
    return resource["kind"] == target.get("kind", resource["kind"]) and (
        name is None or re.fullmatch(name, resource["metadata"]["name"]) is not None
    )


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    """A strategic merge patch (the subset: maps merge, null deletes, MERGE_BY_NAME lists by name)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for k, v in patch.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return merged
    if key in MERGE_BY_NAME and isinstance(base, list) and isinstance(patch, list):
        merged_list = [copy.deepcopy(item) for item in base]
        names = [item.get("name") for item in merged_list]
        for item in patch:
            if item.get("name") in names:
                i = names.index(item["name"])
                merged_list[i] = _merge(merged_list[i], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _json_patch(resource: Resource, operation: dict[str, Any]) -> None:
    op, path = operation["op"], operation["path"]
    if op not in ("add", "replace", "remove"):
        raise KustomizeError(f"JSON patch op {op} not supported")
    keys = [k.replace("~1", "/").replace("~0", "~") for k in path.lstrip("/").split("/")]
    node: Any = resource
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        if op == "remove":
            del node[int(last)]
        elif op == "add":
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(operation["value"]))
        else:
            node[int(last)] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[last]
    else:
        if op == "replace" and last not in node:
            raise KustomizeError(f"JSON patch replace of a missing field {path}")
        node[last] = copy.deepcopy(operation["value"])


# --- validation ----------------------------------------------------------------------------------


def crd_schema(resource: Resource) -> dict[str, Any] | None:
    """The JSON schema written for a custom resource's kind (deploy/k8s/schemas/), if there is one."""
    group = resource["apiVersion"].replace("/", "_")
    path = SCHEMAS / f"{group}_{resource['kind'].lower()}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def validate(resources: list[Resource]) -> list[str]:
    """What is wrong with the objects, one line each (empty: every object is valid)."""
    import jsonschema
    import kubernetes_validate

    problems = []
    for resource in resources:
        where = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        group = resource["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):  # a custom resource (keda.sh/...)
            schema = crd_schema(resource)
            if schema is None:
                problems.append(f"{where}: no schema for {resource['apiVersion']} in deploy/k8s/schemas/")
                continue
            problems += [
                f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in jsonschema.Draft202012Validator(schema).iter_errors(resource)
            ]
            continue
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{where}: {'/'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: {resource['apiVersion']} {resource['kind']} is not a Kubernetes kind")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "render":
        print(yaml.safe_dump_all(render(argv[1]), sort_keys=False), end="")
        return 0
    if argv == ["check"]:
        failed = False
        for name in overlays():
            resources = render(name)
            problems = validate(resources)
            failed = failed or bool(problems)
            for problem in problems:
                print(f"{name}: {problem}", file=sys.stderr)
            print(f"{name}: {len(resources)} objects, {'INVALID' if problems else 'valid'}")
        return 1 if failed else 0
    print("usage: python -m devtools.deploy render OVERLAY | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
