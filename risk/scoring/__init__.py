"""Risk scoring: rule severity now; learned behavioral models beside it."""

from risk.scoring.rules import RuleScorer, noisy_or

__all__ = ["RuleScorer", "noisy_or"]
