"""The environment's promises under load and faults: restart recovery (SIGKILL of the
environment), waking 200 hibernating instances on time, and the concurrency cap."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path


from runtara_core.persistence.rows import InstanceStatus, InstanceUpdate, NewInstance, TerminationReason
from runtara_environment.client import ManagementClient
from tests.environment.conftest import TEST_IMAGES, EnvironmentProcess, MakeEnvironment, wait_until
from tests.sdk.conftest import read_ledger

WAIT_S = 180.0


async def wait_all_terminal(client: ManagementClient, ids: list[str], timeout_s: float = WAIT_S) -> None:
    async def all_done() -> bool:
        page = await client.list_instances(status=["completed", "failed", "cancelled"], limit=1000)
        return len({i.instance_id for i in page.items} & set(ids)) == len(ids)

    await wait_until(all_done, timeout_s=timeout_s, what=f"{len(ids)} instances terminal")


async def test_sigkill_of_the_environment_loses_and_doubles_nothing(
    make_environment: MakeEnvironment, tmp_path: Path
) -> None:
    environment = await make_environment(hibernate_after_ms=1000, crash_backoff_initial_ms=100)
    ledger = tmp_path / "ledger.jsonl"
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        running = [
            (await client.start_instance("steps", {"n": 8, "step_s": 0.4, "ledger": str(ledger)})).instance_id
            for _ in range(10)
        ]
        sleeping = [
            (await client.start_instance("steps", {"n": 2, "sleep_s": 4, "ledger": str(ledger)})).instance_id
            for _ in range(10)
        ]

        async def settled() -> bool:
            page = await client.list_instances(limit=100)
            by_id = {i.instance_id: i for i in page.items}
            return all(by_id[i].status == "running" for i in running) and all(
                by_id[i].status == "suspended" for i in sleeping
            )

        await wait_until(settled, timeout_s=WAIT_S, what="10 running and 10 sleeping")
        await wait_until(lambda: _lines(ledger, 5), timeout_s=WAIT_S, what="some steps done")
    survivors = {p.pid for p in environment.instance_processes()}
    assert survivors, "instance processes should outlive their environment"
    await environment.crash()
    await asyncio.sleep(1.0)
    await environment.start()
    async with environment.client() as client:
        await wait_all_terminal(client, running + sleeping)
        page = await client.list_instances(limit=100)
        assert {i.status for i in page.items} == {"completed"}, [(i.instance_id, i.status, i.error) for i in page.items]
    counts: dict[tuple[str, int], int] = {}
    for line in read_ledger(ledger):
        key = (line["instance_id"], line["i"])
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 10 * 8 + 10 * 2
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert "adopted" in environment.log()


async def _lines(path: Path, n: int) -> bool:
    return len(read_ledger(path)) >= n


async def test_200_hibernating_instances_wake_on_time(make_environment: MakeEnvironment) -> None:
    """200 instances hibernating (written while the environment is down, as a previous run
    would have left them) with wake times spread over 10 s: all resume, none early, none lost,
    none twice."""
    environment = await make_environment(max_concurrent_instances=40, wake_sweep_interval_s=1)
    count = 200
    async with environment.client() as client:
        image = await client.register_image(TEST_IMAGES / "steps.py", name="steps")
    await environment.stop()
    base_ms = int(time.time() * 1000) + 5000
    wake_at = {f"w-{k}": base_ms + 10_000 * k // count for k in range(count)}
    db = await environment.open_database()
    try:
        for instance_id, at in wake_at.items():
            await db.create_instance(
                NewInstance(instance_id, image.image_id, json.dumps({"n": 1, "sleep_until_ms": at}).encode())
            )
            await db.transition(
                instance_id,
                {InstanceStatus.PENDING},
                InstanceStatus.SUSPENDED,
                reason=TerminationReason.SLEEPING,
                update=InstanceUpdate(wake_at_ms=at),
            )
    finally:
        await db.close()
    await environment.start()
    async with environment.client() as client:
        ids = list(wake_at)
        await wait_all_terminal(client, ids, timeout_s=WAIT_S)
        for instance_id in ids:
            row = await client.get_instance(instance_id)
            assert row.status == "completed", (instance_id, row.status, row.error)
            assert row.output["woke_at_ms"] >= wake_at[instance_id], instance_id  # never early
            assert row.attempt == 1
            events = (await client.list_events(instance_id, limit=1000)).items
            assert [e.type for e in events].count("launched") == 1  # woken once
            assert [e.type for e in events].count("completed") == 1
            works = [c for c in (await client.list_checkpoints(instance_id)).items if "work" in c.checkpoint_id]
            assert len(works) == 1


async def test_capacity_never_exceeds_the_limit(make_environment: MakeEnvironment) -> None:
    environment: EnvironmentProcess = await make_environment(max_concurrent_instances=5)
    peak = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            live = environment.instance_processes()
            peak = max(peak, len(live))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        async with environment.client() as client:
            await client.register_image(TEST_IMAGES / "steps.py", name="steps")
            ids = [(await client.start_instance("steps", {"n": 2, "step_s": 0.05})).instance_id for _ in range(50)]
            await wait_all_terminal(client, ids)
            page = await client.list_instances(limit=100)
            assert [i.status for i in page.items].count("completed") == 50
    finally:
        stop.set()
        await sampler
    assert peak == 5, peak  # the cap is reached (50 queued starts keep it full) and never passed
