"""One simulated account: its identity, its call list, its faults and limits, its counters."""

from __future__ import annotations

import collections
import random
import threading
from collections.abc import Callable
from typing import Any

from .calllist import CallList
from .config import SimAccount, SimulatorConfig
from .generate import Numbers
from .limits import FaultSource, RateLimiter


class Account:
    """Everything the simulator keeps for one account; hold `lock` to read or change any of it."""

    def __init__(self, index: int, cfg: SimulatorConfig, clock: Callable[[], float]) -> None:
        auth_id = f"MA{100000 + index}"
        self.info = SimAccount(f"acct{index}", auth_id, f"tvx_sim_{auth_id}")
        self.lock = threading.Lock()
        # Separate streams, so turning on a fault or a dynamic never changes the generated data.
        rng = random.Random(f"vox-sim:{cfg.seed}:{auth_id}")
        self.faults = FaultSource(random.Random(f"vox-sim-faults:{cfg.seed}:{auth_id}"))
        dyn_rng = random.Random(f"vox-sim-dynamics:{cfg.seed}:{auth_id}")
        self.list = CallList(rng, dyn_rng, Numbers(rng, cfg.calls), clock)
        self.limiter = RateLimiter()
        self.requests = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.resets = 0
        self.truncated = 0

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "resets": self.resets,
            "truncated": self.truncated,
        }

    def reset_stats(self) -> None:
        self.requests = self.resets = self.truncated = 0
        self.by_status.clear()
        self.limiter.reset_stats()
