"""An in-process Kubernetes API server emulator for integration tests.

``KubeAPI`` serves the REST API over plain HTTP from a background thread; ``api.store`` is the
same state for direct (synchronous, thread-safe) access; ``SimCluster`` adds nodes, a
scheduler and kubelets that move pods through their phases.
"""

from .cluster import SimCluster
from .errors import APIError
from .server import KubeAPI
from .store import Store, WatchEvent

__all__ = ["APIError", "KubeAPI", "SimCluster", "Store", "WatchEvent"]
