"""What a result file records about where it was produced."""
from __future__ import annotations

import platform
import sys
from typing import Any

__all__ = ["environment"]


def environment() -> dict[str, Any]:
    import jax
    import optax

    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
        "optax": optax.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind if devices else "none",
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
    }
