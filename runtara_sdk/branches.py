"""Branches: every task a workflow starts gets a path fixed by the code, not by timing.

A replayed call returns without yielding to the event loop, so parallel branches reach their
calls in a different order on replay than live; one counter for the whole workflow would hand
a branch another branch's results. Instead each branch counts its own calls, and a task started
from a branch (``asyncio.gather``, ``create_task``, a ``TaskGroup``) becomes its child, numbered
by the order its parent started it. A task factory installed by the runner does the numbering.

Only tasks started by workflow code become branches: not inside step bodies, and not the SDK's
or the transport's own background tasks, which start in a fresh context (``detached``).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any


class Branch:
    """One task of the workflow, and what the SDK tracks per task."""

    def __init__(self, path: tuple[int, ...] = (), parent: Branch | None = None) -> None:
        self.path = path
        self.parent = parent
        self._calls = 0
        self._children = 0
        self.cancel_delivered = False
        """Whether ``Cancelled`` was raised here or in a branch below (it propagates up)."""

    def next_position(self) -> str:
        self._calls += 1
        return "/".join(str(part) for part in (*self.path, self._calls))

    def spawn(self) -> Branch:
        self._children += 1
        return Branch((*self.path, self._children), self)

    def mark_cancel_delivered(self) -> None:
        branch: Branch | None = self
        while branch is not None:
            branch.cancel_delivered = True
            branch = branch.parent


_current: contextvars.ContextVar[Branch | None] = contextvars.ContextVar("runtara_branch", default=None)
_not_branching: list[contextvars.ContextVar[Any]] = []


def current_branch() -> Branch | None:
    return _current.get()


def enter_branch(branch: Branch) -> contextvars.Token[Branch | None]:
    return _current.set(branch)


def leave_branch(token: contextvars.Token[Branch | None]) -> None:
    _current.reset(token)


def not_branching_while_set(var: contextvars.ContextVar[Any]) -> None:
    """Tasks started while ``var`` holds a value (e.g. inside a step body) are no branches."""
    _not_branching.append(var)


def branch_task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
    *,
    context: contextvars.Context | None = None,
    **options: Any,
) -> asyncio.Task[Any]:
    """``loop.set_task_factory``: a task started from a workflow branch is a child branch."""
    context = context if context is not None else contextvars.copy_context()
    parent = context.get(_current)
    if parent is not None and not any(context.get(var) is not None for var in _not_branching):
        context.run(_current.set, parent.spawn())
    return asyncio.Task(coro, loop=loop, context=context, **options)


def detached(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A background task of the SDK: a fresh context, so it is never a workflow branch."""
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
