"""The e2e environment: local (emulated cluster, process kubelets, SeaweedFS, real operator) or,
with ``DREAM_E2E_REAL=1``, the cluster ``KUBECONFIG`` names."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from e2e.harness import Environment, LocalEnvironment, RealEnvironment


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    if os.environ.get("DREAM_E2E_REAL") == "1":
        if not os.environ.get("KUBECONFIG"):
            pytest.fail("DREAM_E2E_REAL=1 needs KUBECONFIG to name the cluster")
        with RealEnvironment.create() as real:
            yield real
        return
    with LocalEnvironment.create(tmp_path_factory.mktemp("e2e")) as local:
        yield local
