"""Kill a local "container": a process and everything it started (Linux ``/proc``).

A container runtime kills a container's whole cgroup. Locally the nearest thing is the process
tree: a process group is not enough, because torchrun starts each worker in a session of its
own, so killing the agent's group would leave the workers training as orphans.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def kill_tree(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` and all its descendants, found before any is signalled (a killed
    parent's children are re-parented and could no longer be found). Repeats while new
    descendants appear, for processes that were forking meanwhile."""
    seen: set[int] = set()
    for _ in range(3):
        targets = [p for p in [pid, *descendants(pid)] if p not in seen]
        if not targets:
            return
        for target in targets:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
        seen.update(targets)


CONTAINER_TAG = "DREAM_LOCAL_CONTAINER_ID"
"""Set in a local container's environment; every process it starts inherits it, even those that
leave its process group or session, so :func:`tagged` finds them all (a stand-in for a cgroup)."""


def tagged(value: str) -> list[int]:
    """The live (non-zombie) processes whose environment has ``CONTAINER_TAG=value``."""
    needle = f"{CONTAINER_TAG}={value}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                continue
            if needle in (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
        except OSError:  # exited, or not ours to read
            continue
    return found


def kill_tagged(value: str, sig: signal.Signals = signal.SIGKILL) -> list[int]:
    """Signal every process of the container tagged ``value``; returns their pids."""
    targets = tagged(value)
    for target in targets:
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            pass
    return targets
