"""Launch order under the concurrency cap, and per-instance resource limits."""

from __future__ import annotations

from tests.environment.conftest import TEST_IMAGES, MakeEnvironment

WAIT_S = 90.0


async def test_higher_priority_launches_first(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(max_concurrent_instances=1)
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        blocker = await client.start_instance("steps", {"n": 3, "step_s": 0.5})
        low = [(await client.start_instance("steps", {"n": 1}, priority=-5)).instance_id for _ in range(3)]
        high = [(await client.start_instance("steps", {"n": 1}, priority=10)).instance_id for _ in range(3)]
        normal = (await client.start_instance("steps", {"n": 1})).instance_id
        for instance_id in [blocker.instance_id, *low, *high, normal]:
            assert (await client.wait(instance_id, timeout_s=WAIT_S)).status == "completed"
        started = {i: (await client.get_instance(i)).started_at_ms for i in [*low, *high, normal]}
        assert max(started[i] for i in high) <= started[normal] <= min(started[i] for i in low), started
        assert [i for i in sorted(high, key=started.__getitem__)] == high  # oldest first within a priority


async def test_memory_limit_applies_to_each_launch(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(instance_memory_limit_bytes=1024 * 1024 * 1024)
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "hog.py", name="hog")
        small = await client.start_instance("hog", {"mib": 64})
        big = await client.start_instance("hog", {"mib": 2048})
        assert (await client.wait(small.instance_id, timeout_s=WAIT_S)).output == 64 * 1024 * 1024
        refused = await client.wait(big.instance_id, timeout_s=WAIT_S)
        assert (refused.status, refused.termination_reason) == ("failed", "application_error")
        assert "could not allocate 2048 MiB" in (refused.error or "")
