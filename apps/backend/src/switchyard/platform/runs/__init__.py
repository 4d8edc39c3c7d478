"""A run's life, with one owner: the only code that writes `task_runs`.

`ledger` records runs and moves them through their states (claims, outcomes, hand-backs,
cancels, publish marks); `admission` gives runs their tenant's share (fair share) and parks
the delayed ones that come due past it; `retention` removes what has expired; `changes` is
the one hook after a run changed. Everything else reads `task_runs` and asks these to write
(`tests/unit/test_run_ownership.py` fails otherwise). The states and their predicates are
named once, in `db.models.task_run`. See docs/architecture.md, "A run's states"."""
