"""N fast checkpointed steps, each proving in the ledger that its checkpoint was acknowledged.

For the database-faults scenario: a step body appends a "work" line (it ran); once the step has
returned, which happens only after the core acknowledged its checkpoint, the workflow appends an
"acked" line naming that checkpoint. So an "acked" line in the ledger is a checkpoint the
database must hold, whatever killed the server afterwards.

Input: {"n": int, "ledger": str | None, "step_s": float}
Output: {"results": [i * i for i in range(n)]}.
"""

import asyncio

from runtara_sdk import current_step, workflow
from runtara_sdk.ledger import append_ledger


async def work(i: int, ledger: str | None, step_s: float) -> dict:
    if step_s:
        await asyncio.sleep(step_s)
    append_ledger(ledger, "work", i=i)
    return {"sq": i * i, "cp": current_step().step_id}


@workflow
async def main(ctx, input: dict) -> dict:
    n = int(input.get("n", 10))
    ledger = input.get("ledger")
    step_s = float(input.get("step_s", 0))
    results = []
    for i in range(n):
        done = await ctx.step(f"w-{i}", work, i, ledger, step_s)
        # Outside any step: instance_id must be given (a step's line takes it from the step).
        append_ledger(ledger, "acked", instance_id=ctx.instance_id, checkpoint=done["cp"])
        results.append(done["sq"])
    return {"results": results}
