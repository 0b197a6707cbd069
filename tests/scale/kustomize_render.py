"""Render the kustomize subset that docker/k8s uses, in Python: CI must not depend on a kubectl binary.

Supported: `resources` (files and directories), `namespace`, `images` and strategic-merge `patches` given by
`path`. Anything else in a kustomization.yaml, and any patch directive (`$patch`, `$setElementOrder/…`), raises
`UnsupportedKustomization` rather than being rendered wrongly. Where kubectl is installed, the tests also compare
this renderer's output with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILE = "kustomization.yaml"
SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "images", "patches"})
CLUSTER_SCOPED_KINDS = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"})
# Strategic-merge lists merged by key (the Kubernetes API's patchMergeKey); every other list is replaced whole,
# as the API does for atomic lists such as tolerations, args or an HPA's metrics.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
IMAGE_LISTS = ("containers", "initContainers")


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement: use kubectl, or keep to the subset."""


def render(directory: Path) -> list[Resource]:
    """The resources `kubectl kustomize DIRECTORY` would print, in the order they were listed."""
    kustomization = _load_one(directory / KUSTOMIZATION_FILE)
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise UnsupportedKustomization(f"{directory}: unsupported kustomization fields {sorted(unsupported)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources.extend(render(path) if path.is_dir() else _load_all(path))
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: only `patches: [{{path: FILE}}]` is supported, not {patch}")
        _apply_patch(resources, _load_one(directory / patch["path"]))
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED_KINDS:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        _set_image(resources, image)
    return resources


def _load_all(path: Path) -> list[Resource]:
    with path.open() as file:
        return [document for document in yaml.safe_load_all(file) if document is not None]


def _load_one(path: Path) -> Resource:
    documents = _load_all(path)
    if len(documents) != 1:
        raise UnsupportedKustomization(f"{path}: expected one YAML document, found {len(documents)}")
    return documents[0]


def _apply_patch(resources: list[Resource], patch: Resource) -> None:
    name = patch["metadata"]["name"]
    targets = [
        resource
        for resource in resources
        if resource["kind"] == patch["kind"]
        and resource["apiVersion"] == patch["apiVersion"]
        and resource["metadata"]["name"] == name
        and patch["metadata"].get("namespace") in (None, resource["metadata"].get("namespace"))
    ]
    if len(targets) != 1:
        raise UnsupportedKustomization(f"patch for {patch['kind']}/{name} matches {len(targets)} resources, not 1")
    _merge_map(targets[0], patch)


def _merge_map(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            raise UnsupportedKustomization(f"patch directive {key!r} is not supported")
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_map(target[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(target.get(key), list):
            target[key] = _merge_list(target[key], value, MERGE_KEYS[key])
        else:
            target[key] = copy.deepcopy(value)


def _merge_list(target: list[dict[str, Any]], patch: list[dict[str, Any]], merge_key: str) -> list[dict[str, Any]]:
    # kustomize puts patch entries that are new first, then the existing entries (merged in place).
    existing = {item[merge_key]: item for item in target}
    added = [copy.deepcopy(item) for item in patch if item[merge_key] not in existing]
    for item in patch:
        if item[merge_key] in existing:
            _merge_map(existing[item[merge_key]], item)
    return added + target


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    unsupported = set(image) - {"name", "newName", "newTag", "digest"}
    if unsupported:
        raise UnsupportedKustomization(f"unsupported `images` fields {sorted(unsupported)}")
    for container in _containers(resources):
        name, tag, digest = split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        elif "newTag" in image:
            container["image"] = f"{name}:{image['newTag']}"
        else:
            container["image"] = name + (f"@{digest}" if digest else f":{tag}" if tag else "")


def _containers(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            if key in IMAGE_LISTS and isinstance(child, list):
                yield from (container for container in child if isinstance(container, dict) and "image" in container)
            else:
                yield from _containers(child)
    elif isinstance(value, list):
        for child in value:
            yield from _containers(child)


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """`registry:5000/name:tag@sha256:…` → (`registry:5000/name`, `tag`, `sha256:…`)."""
    reference, _, digest = reference.partition("@")
    name, tag = reference, None
    last_colon = reference.rfind(":")
    if last_colon > reference.rfind("/"):
        name, tag = reference[:last_colon], reference[last_colon + 1 :]
    return name, tag, digest or None
