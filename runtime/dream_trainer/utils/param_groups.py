"""param_groups: optimizer parameter groups with their own learning rates, chosen by name."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from torch import nn

from dream_trainer.configs.errors import ConfigError

Matcher: TypeAlias = "str | re.Pattern[str] | Callable[[str, nn.Parameter], bool]"
GroupSpec: TypeAlias = "float | tuple[Any, float] | tuple[Any, float, dict[str, Any]]"

_WRAPPERS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def _clean(name: str) -> str:
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def _matcher(group: str, matcher: Any) -> Callable[[str, nn.Parameter], bool]:
    if isinstance(matcher, str):
        try:
            matcher = re.compile(matcher)
        except re.error as err:
            raise ConfigError(f"param_groups[{group!r}]", matcher,
                              f"is not a valid regular expression ({err})",
                              "pass a Python regex searched in parameter names, e.g. r'lora_'"
                              ) from None
    if isinstance(matcher, re.Pattern):
        pattern = matcher
        return lambda name, param: pattern.search(name) is not None
    if callable(matcher):
        return matcher
    raise ConfigError(f"param_groups[{group!r}]", matcher,
                      "the matcher must be a regex string, a compiled pattern or a "
                      "predicate (name, param) -> bool", "pass e.g. (r'memory\\.', 2e-4)")


def param_groups(model: nn.Module | Mapping[str, nn.Module], groups: Mapping[str, GroupSpec], *,
                 weight_decay: float | None = None,
                 no_weight_decay: str | Callable[[str, nn.Parameter], bool] | None = None,
                 include_frozen: bool = False) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per entry of ``groups``, each with its own learning rate.

    ``groups`` maps a group name to ``(matcher, lr)`` or ``(matcher, lr, options)``, where
    ``matcher`` is a regex searched in each parameter's name (``re.search``, names as in
    ``model.named_parameters()`` without activation-checkpointing / compile prefixes), a compiled
    pattern, or a predicate ``(name, param) -> bool``, and ``options`` are extra optimizer
    settings for that group (e.g. ``{"betas": (0.9, 0.95)}``). At most one entry is a bare
    learning rate: the *default group*, which takes every parameter no matcher claimed.

    * Groups are matched in the order given and the first match wins, so no parameter is in
      two groups; every trainable parameter is in exactly one (frozen ones are left out unless
      ``include_frozen``).
    * A matcher that claims no parameter is an error (usually a typo), and so is a parameter
      that nothing claims when there is no default group.
    * ``weight_decay`` sets each group's weight decay; parameters matching ``no_weight_decay``
      (e.g. ``r"bias|norm"``) go to a sibling group ``"<name>.no_decay"`` with weight decay 0.
    * Each group carries ``name`` and ``param_names`` (PyTorch keeps both in the optimizer
      state dict), so schedulers, logs and checkpoints can tell the groups apart. Empty groups
      (e.g. a default nothing fell into) are omitted.

    Schedulers scale every group from its own initial LR (LambdaLR, cosine, ...), so the ratios
    between groups hold throughout training.

    Example (seed 004's memory / LoRA / base learning rates)::

        groups = param_groups(self.model, {
            "memory": (r"\\.memory\\.", 2e-4),
            "lora": (r"lora_", 1e-4),
            "base": 1e-5,                     # everything else
        }, weight_decay=0.01, no_weight_decay=r"bias|norm")
        self.optimizer = torch.optim.AdamW(groups)
    """
    named = _named_parameters(model, include_frozen)
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError("param_groups.groups", groups, "must be a non-empty dict of "
                          "name -> (matcher, lr) or name -> lr (the default group)",
                          "pass e.g. {'lora': (r'lora_', 1e-4), 'base': 1e-5}")
    specs: list[tuple[str, Callable[[str, nn.Parameter], bool] | None, float, dict[str, Any]]] = []
    default: str | None = None
    for group, spec in groups.items():
        field = f"param_groups[{group!r}]"
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            if default is not None:
                raise ConfigError(field, spec, f"is a second default group (after {default!r})",
                                  "give all but one group a matcher: (pattern, lr)")
            default = group
            specs.append((group, None, float(spec), {}))
            continue
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise ConfigError(field, spec, "expected (matcher, lr), (matcher, lr, options) or a "
                              "bare lr for the default group", "pass e.g. (r'lora_', 1e-4)")
        matcher, lr, *rest = spec
        options = rest[0] if rest else {}
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
            raise ConfigError(f"{field}.lr", lr, "must be a number >= 0", "pass e.g. 1e-4")
        if not isinstance(options, dict) or {"params", "lr", "name"} & set(options):
            raise ConfigError(f"{field}.options", options,
                              "must be a dict of extra optimizer settings (not params/lr/name)",
                              "pass e.g. {'betas': (0.9, 0.95)}")
        specs.append((group, _matcher(group, matcher), float(lr), dict(options)))

    members: dict[str, list[tuple[str, nn.Parameter]]] = {group: [] for group, *_ in specs}
    unclaimed: list[str] = []
    for name, param in named:
        for group, match, _, _ in specs:
            if match is not None and match(name, param):
                members[group].append((name, param))
                break
        else:
            if default is None:
                unclaimed.append(name)
            else:
                members[default].append((name, param))
    for group, match, _, _ in specs:
        if match is not None and not members[group]:
            sample = ", ".join(name for name, _ in named[:8])
            raise ConfigError(f"param_groups[{group!r}]", groups[group],
                              "matches no trainable parameter (or only ones an earlier group "
                              f"claimed); parameter names look like: {sample}",
                              "fix the pattern, or drop the group")
    if unclaimed:
        raise ConfigError("param_groups.groups", list(groups),
                          f"{len(unclaimed)} parameter(s) match no group, e.g. {unclaimed[:5]}",
                          "add a default group with a bare learning rate, e.g. 'base': 1e-5")

    decay_free = _matcher("no_weight_decay", no_weight_decay) if no_weight_decay else None
    out: list[dict[str, Any]] = []
    for group, _, lr, options in specs:
        params = members[group]
        splits = [(group, params, weight_decay)]
        if decay_free is not None:
            splits = [(group, [(n, p) for n, p in params if not decay_free(n, p)], weight_decay),
                      (f"{group}.no_decay", [(n, p) for n, p in params if decay_free(n, p)], 0.0)]
        for name, chosen, decay in splits:
            if not chosen:
                continue
            entry: dict[str, Any] = {"name": name, "params": [p for _, p in chosen],
                                     "param_names": [n for n, _ in chosen], "lr": lr, **options}
            if decay is not None:
                entry["weight_decay"] = decay
            out.append(entry)
    return out


def _named_parameters(model: nn.Module | Mapping[str, nn.Module],
                      include_frozen: bool) -> list[tuple[str, nn.Parameter]]:
    if isinstance(model, nn.Module):
        items = [(_clean(n), p) for n, p in model.named_parameters()]
    elif isinstance(model, Mapping):
        items = [(f"{prefix}.{_clean(n)}", p) for prefix, m in model.items()
                 for n, p in m.named_parameters()]
    else:
        raise ConfigError("param_groups.model", type(model).__name__,
                          "expected an nn.Module or a dict of name -> nn.Module",
                          "pass the model, e.g. param_groups(self.model, ...)")
    named = [(n, p) for n, p in items if include_frozen or p.requires_grad]
    if not named:
        raise ConfigError("param_groups.model", type(model).__name__,
                          "has no trainable parameters", "unfreeze some parameters first")
    return named
