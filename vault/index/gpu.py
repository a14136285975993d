"""faiss on a GPU, when this machine's faiss has one: exact search and IVF indexes move there, fast-scan stays."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index: Any, what: str) -> Any | None:
    """`index` copied to every GPU, or None when there is none or faiss has no GPU version of it."""
    if not gpu_available():
        return None
    import faiss

    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as e:  # e.g. fast-scan PQ has no GPU version: stays on CPU, same API
        log.info("index %s stays on CPU: %s", what, e)
        return None
