"""Exit codes of ``python -m routing``, in one place so scripts can rely on them.

Deploy scripts and CI branch on these: "the broker differs" (fix it) must be
told apart from "the broker could not be asked" (retry later or page someone).
"""
from __future__ import annotations

#: Everything asked for was done, or the broker matches the topology.
OK = 0
#: The broker differs from the topology, a declaration was refused, or the
#: command refused to act (unknown queue, queue still consumed).
FAILED = 1
#: RabbitMQ or its management API could not be reached (or refused our login).
#: argparse also exits 2 on a usage error; its message starts with "usage:".
UNREACHABLE = 2
