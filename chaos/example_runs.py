"""Runs of the example images (``images/``) with one planned fault each, and how to tell that a
run ended right (pure: a seeded plan in, inputs and expectations out).

Each example's output is a pure function of its input, its instance id and the signals it got,
so the oracle is exact: batch's checksum is recomputed from the items; order's, welcome's and
approval's ids must be the ones derived from each step's idempotency key *and* the ones its
ledger saw, so an output that mixes two runs of a step is caught.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from chaos.audit import Expectation, InstanceFacts

HIBERNATE_AFTER_MS = 2500
"""The environment setting the plans assume: sleeps and waits longer than this hibernate."""

FAULTS = (
    "random-time",  # SIGKILL of the process group from outside, at a random moment
    "step.after_body",
    "step.after_checkpoint",
    "sleep.started",
    "hibernate.recorded",
    "signal.waiting",
    "signal.consumed",
)


@dataclass(frozen=True)
class RunPlan:
    instance_id: str
    image: str
    input: dict[str, Any]
    fault: str
    failpoints: str = ""
    """RUNTARA_FAILPOINTS for the start ("" for an outside kill)."""
    kill_after_s: float | None = None
    """Outside kill: this long after the instance first runs."""
    signal_after_s: float | None = None
    """Send the approval signal this long after the instance first runs."""
    signal_payload: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"RUNTARA_FAILPOINTS": self.failpoints} if self.failpoints else {}

    def expectation(self) -> Expectation:
        signals = (self.signal_payload,) if self.signal_payload else ()
        return Expectation(check_output=self._check, signals=signals)

    def _check(self, output: Any, fact: InstanceFacts) -> str | None:
        return check_output(self, output, fact)


def plan_run(rng: random.Random, instance_id: str, ledger: str, fault: str | None = None) -> RunPlan:
    """One run with one fault (``fault`` or a random one), and sometimes a second failpoint in
    the relaunch too (a crash during recovery)."""
    fault = fault or rng.choice(FAULTS)
    base = {"ledger": ledger}
    if fault == "random-time":
        image = rng.choice(["order", "batch", "welcome-email"])
        run_input = example_input(image, rng, base, step_delay_s=0.15, short_sleep=True)
        plan = RunPlan(instance_id, image, run_input, fault, kill_after_s=rng.uniform(0.0, 0.8))
    elif fault in ("step.after_body", "step.after_checkpoint"):
        image = rng.choice(["order", "batch", "welcome-email", "approval"])
        run_input = example_input(image, rng, base, step_delay_s=0.0, short_sleep=True)
        hit = rng.randint(1, _steps(image, run_input))
        plan = _with_signal(rng, RunPlan(instance_id, image, run_input, fault, failpoints=f"{fault}#{hit}@1"))
    elif fault == "sleep.started":
        run_input = {**base, "user": f"u{rng.randrange(1000)}", "follow_up_after_s": rng.uniform(0.3, 1.5)}
        plan = RunPlan(instance_id, "welcome-email", run_input, fault, failpoints=f"{fault}#1@1")
    elif fault == "hibernate.recorded":
        if rng.random() < 0.5:
            run_input = {**base, "user": f"u{rng.randrange(1000)}", "follow_up_after_s": rng.uniform(3.0, 4.0)}
            plan = RunPlan(instance_id, "welcome-email", run_input, fault, failpoints=f"{fault}#1@1")
        else:  # a long approval wait hibernates; the signal comes after it did
            run_input = {**base, "requester": f"r{rng.randrange(1000)}", "timeout_s": 120}
            plan = RunPlan(
                instance_id, "approval", run_input, fault, failpoints=f"{fault}#1@1",
                signal_after_s=rng.uniform(1.0, 2.0), signal_payload=approval_payload(rng, instance_id),
            )  # fmt: skip
    elif fault == "signal.waiting":
        # A wait shorter than the hibernate threshold runs in-process; the signal comes later.
        run_input = {**base, "requester": f"r{rng.randrange(1000)}", "timeout_s": HIBERNATE_AFTER_MS / 1000 * 0.9}
        plan = RunPlan(
            instance_id, "approval", run_input, fault, failpoints=f"{fault}#1@1",
            signal_after_s=rng.uniform(0.2, 0.6), signal_payload=approval_payload(rng, instance_id),
        )  # fmt: skip
    elif fault == "signal.consumed":
        run_input = {**base, "requester": f"r{rng.randrange(1000)}", "timeout_s": 120}
        plan = RunPlan(
            instance_id, "approval", run_input, fault, failpoints=f"{fault}#1@1",
            signal_after_s=rng.uniform(0.0, 1.5), signal_payload=approval_payload(rng, instance_id),
        )  # fmt: skip
    else:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if plan.failpoints and rng.random() < 0.25:  # and die once more while recovering
        second = rng.choice(["step.after_body", "step.after_checkpoint"])
        plan = _replace(plan, failpoints=f"{plan.failpoints},{second}#1@2")
    return plan


def _replace(plan: RunPlan, **changes: Any) -> RunPlan:
    return RunPlan(**{**plan.__dict__, **changes})


def _with_signal(rng: random.Random, plan: RunPlan) -> RunPlan:
    if plan.image != "approval":
        return plan
    return _replace(plan, signal_after_s=rng.uniform(0.0, 1.0), signal_payload=approval_payload(rng, plan.instance_id))


def approval_payload(rng: random.Random, instance_id: str) -> dict[str, Any]:
    """A payload unique to this run, so the audit can find exactly its deliveries."""
    return {"approved": rng.random() < 0.7, "by": f"approver-{instance_id}"}


def example_input(image: str, rng: random.Random, base: dict[str, Any], *, step_delay_s: float, short_sleep: bool) -> dict[str, Any]:
    """A random valid input for ``image``, with the ledger and knobs in ``base``."""
    if image == "order":
        return {
            "order_id": f"o-{rng.randrange(10**6)}", "customer": f"c-{rng.randrange(100)}",
            "amount": round(rng.uniform(1, 500), 2), "items": [f"sku-{rng.randrange(50)}" for _ in range(rng.randint(1, 3))],
            "step_delay_s": step_delay_s, **base,
        }  # fmt: skip
    if image == "batch":
        return {"items": rng.randint(3, 12), "item_delay_s": step_delay_s / 2, **base}
    if image == "welcome-email":
        sleep_s = rng.uniform(0.2, 1.0) if short_sleep else rng.uniform(3.0, 4.0)
        return {"user": f"u{rng.randrange(1000)}", "follow_up_after_s": sleep_s, "step_delay_s": step_delay_s, **base}
    if image == "approval":
        return {"requester": f"r{rng.randrange(1000)}", "timeout_s": 120, **base}
    raise ValueError(image)


def _steps(image: str, run_input: dict[str, Any]) -> int:
    """How many step checkpoints a run of ``image`` saves (a failpoint hit beyond it never fires)."""
    return {"order": 3, "welcome-email": 2, "approval": 2}.get(image) or int(run_input["items"])


# ---------------------------------------------------------------------------- oracles


def derived_id(prefix: str, instance_id: str, step_id: str, length: int = 16) -> str:
    """What the examples derive from a step's idempotency key (``instance_id/step_id``)."""
    return f"{prefix}_{hashlib.sha256(f'{instance_id}/{step_id}'.encode()).hexdigest()[:length]}"


def check_output(plan: RunPlan, output: Any, fact: InstanceFacts) -> str | None:
    """None if ``output`` is exactly what an uninterrupted run would return."""
    if not isinstance(output, dict):
        return f"not an object: {output!r}"
    steps = {e.what: e for e in fact.ledger}
    iid = plan.instance_id

    def ledger_id(what: str, key: str, prefix: str, length: int = 16) -> str:
        """The id the step derived, as its ledger line recorded it (a step that never ran, or
        recorded another id, makes a marker no output can equal)."""
        entry = steps.get(what)
        if entry is None or entry.step_id is None:
            return f"<no {what} step ran>"
        derived = derived_id(prefix, iid, entry.step_id, length)
        return derived if entry.fields.get(key) == derived else f"<ledger {what} {entry.fields.get(key)!r}>"

    if plan.image == "batch":
        items = list(range(plan.input["items"]))
        digests = "".join(hashlib.sha256(json.dumps(i, sort_keys=True).encode()).hexdigest()[:16] for i in items)
        expected: dict[str, Any] = {"processed": len(items), "checksum": hashlib.sha256(digests.encode()).hexdigest()[:16]}
    elif plan.image == "order":
        expected = {
            "order_id": plan.input["order_id"],
            "charge_id": ledger_id("charge", "charge_id", "ch"),
            "reservation_id": ledger_id("reserve", "reservation_id", "rsv"),
            "shipment_id": ledger_id("ship", "shipment_id", "shp"),
        }
    elif plan.image == "welcome-email":
        expected = {
            "user": plan.input["user"],
            "messages": [ledger_id("welcome", "message_id", "msg"), ledger_id("follow_up", "message_id", "msg")],
        }
    elif plan.image == "approval":
        approved = plan.signal_payload.get("approved")
        expected = {
            "request_id": ledger_id("submit", "request_id", "req", 12),
            "decision": "approved" if approved else "rejected",
            "by": plan.signal_payload.get("by"),
        }
    else:
        return f"no oracle for image {plan.image!r}"
    return None if output == expected else f"got {output!r}, expected {expected!r}"
