"""L0 pools: named, byte-budgeted pools for arrays (``host://`` in host memory, the default and
the fallback; ``cupy://<device>`` in GPU memory through CuPy). One pool logic
(:class:`~.hostpool.PoolBackend`) over an allocator per device (:mod:`.hostpool`,
:mod:`.gpupool`).

The factories here check every URL option before an allocator exists: :data:`HOST_OPTIONS`,
:data:`CUPY_OPTIONS`. The pools themselves come from ``MemoryConfig.gpu_pools``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ConfigError
from ...pools import device_memory, plan_pools

if TYPE_CHECKING:
    from ...config import MemoryConfig
    from ...tiers import Tier
    from .._url import BackendURL
    from ..base import Backend

__all__ = ["CUPY_OPTIONS", "HOST_OPTIONS", "open_cupy", "open_host"]

#: ``host://`` options: ``memory`` (a size such as ``4GiB``, or a device preset such as
#: ``GH200`` to rehearse its pools on), ``block`` (bytes per allocation block), and
#: ``default_pool`` (where items that name no pool go).
HOST_OPTIONS = ("block", "default_pool", "memory")
#: ``cupy://<device>`` options.
CUPY_OPTIONS = ("default_pool",)


def open_host(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    """Host-memory pools (``host://?memory=4GiB``)."""
    url.check(HOST_OPTIONS)
    memory = url.options.get("memory")
    total = device_memory(config.host_pool_memory if memory is None else memory,
                          "host pool memory")
    budgets = plan_pools(config.gpu_pools, total, config.gpu_reserve, device="host memory")
    block = url.integer("block", 512) or 512

    from .hostpool import HostPoolBackend, default_pool_of

    default_pool = default_pool_of(budgets, url.text_or_none("default_pool"))
    return HostPoolBackend(budgets, default_pool, block)


def open_cupy(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    """GPU pools on ``cupy://<device index>``; host pools, with one warning, when there is no
    usable GPU."""
    url.check(CUPY_OPTIONS)
    spec = url.netloc or url.path.strip("/") or "0"
    try:
        device = int(spec)
    except ValueError:
        raise ConfigError(f"{url.redacted()}: expected cupy://<device index>, e.g. cupy://0") \
            from None

    from .gpupool import open_gpu_pools

    return open_gpu_pools(device, url.text_or_none("default_pool"), config)
