"""Re-export of engine.runlog.strategies for the engine modules that still import it from here."""

from engine.runlog.strategies import (
    DEFAULT_STRATEGY,
    IMPORTANCE_METRICS,
    STRATEGIES,
    Strategy,
    UnknownStrategy,
    get_strategy,
)

__all__ = ["DEFAULT_STRATEGY", "IMPORTANCE_METRICS", "STRATEGIES", "Strategy", "UnknownStrategy", "get_strategy"]
