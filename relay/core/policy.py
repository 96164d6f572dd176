"""The failover policy as a plain value: what the sans-IO machine needs from the config, and no more.

relay/config.py (pydantic, YAML) owns the defaults, the validation and the reasons for each number;
`FailoverConfig.policy()` builds this (so the numbers have one home, and no default here). The core
imports only this module, so it never depends on pydantic or on how the configuration is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    """Every timing of the failover machine; see relay/config.py's FailoverConfig for each reason."""

    connect_timeout_s: float
    stall_timeout_s: float
    budget_s: float
    upgrade_after_s: float
    cooldown_s: float
    hedge_delay_s: float
    hold_s: float
