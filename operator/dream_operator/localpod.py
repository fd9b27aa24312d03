"""What a kubelet does before it execs a container, as pure functions.

The local runner (``dream-trainer run job.yaml``) and the process-based kubelet of the end-to-end
tests both run a worker pod's container as local processes. They share these rules, which are
Kubernetes' own: ``envFrom`` first, then ``env`` in order (a later entry wins), ``$(VAR)`` in an
env value refers to variables defined before it, ``$(VAR)`` in ``command``/``args`` to the
container's final environment, ``$$`` escapes a ``$``, and an unknown ``$(VAR)`` stays as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

Lookup = Callable[[str], Mapping[str, str]]
"""Returns the data of a Secret or ConfigMap by name (raises KeyError when it does not exist)."""


class ContainerConfigError(ValueError):
    """The container cannot start (``CreateContainerConfigError`` on a real kubelet)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of one string."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return _REFERENCE.sub(replace, text)


def _source(lookup: Lookup | None, kind: str, name: str, optional: bool) -> Mapping[str, str]:
    try:
        if lookup is None:
            raise KeyError(name)
        return lookup(name)
    except KeyError:
        if optional:
            return {}
        raise ContainerConfigError(f'{kind} "{name}" not found') from None


def container_env(container: Mapping[str, Any], *, secrets: Lookup | None = None,
                  config_maps: Lookup | None = None,
                  fields: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a container starts with (without the node's own variables).

    ``fields`` answers ``valueFrom.fieldRef`` paths such as ``metadata.name``.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, ref_key, lookup in (("secret", "secretRef", secrets),
                                      ("configmap", "configMapRef", config_maps)):
            ref = source.get(ref_key)
            if ref:
                data = _source(lookup, kind, ref["name"], bool(ref.get("optional")))
                env.update({prefix + k: str(v) for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        value_from = item["valueFrom"]
        for kind, ref_key, lookup in (("secret", "secretKeyRef", secrets),
                                      ("configmap", "configMapKeyRef", config_maps)):
            ref = value_from.get(ref_key)
            if ref:
                optional = bool(ref.get("optional"))
                data = _source(lookup, kind, ref["name"], optional)
                if ref["key"] in data:
                    env[name] = str(data[ref["key"]])
                elif not optional:
                    raise ContainerConfigError(
                        f"couldn't find key {ref['key']} in {kind} {ref['name']} (env {name})")
        if "fieldRef" in value_from:
            path = value_from["fieldRef"]["fieldPath"]
            if fields is None or path not in fields:
                raise ContainerConfigError(f"env {name}: unsupported fieldRef {path!r}")
            env[name] = fields[path]
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; images here have no entrypoint, so a
    container without ``command`` cannot run."""
    command = list(container.get("command") or [])
    if not command:
        raise ContainerConfigError(f"container {container.get('name')!r} has no command")
    return [expand(str(a), env) for a in command + list(container.get("args") or [])]
