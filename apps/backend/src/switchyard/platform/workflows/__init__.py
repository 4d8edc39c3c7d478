"""Workflows in the platform: a workflow's graph (checked, templates filled) and the engine
that starts its runs and makes each step due in the transaction that records its last
parent's outcome."""
