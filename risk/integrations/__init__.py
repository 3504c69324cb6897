"""Governance for the frameworks agents run in: each imports its framework lazily, as an optional extra."""
