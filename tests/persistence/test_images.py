"""Images: versions per tenant and name, tenant scoping, deletion guarded by live instances."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from runtara_core.errors import BadRequest, Conflict, InvalidState, NotFound
from runtara_core.persistence import ImageRow, InstanceStatus, NewImage, Persistence
from tests.conftest import FakeClock
from tests.persistence.conftest import MakeInstance, new_image


async def test_create_image_stores_every_field(persistence: Persistence, clock: FakeClock) -> None:
    new = NewImage(
        image_id="img-1",
        tenant="acme",
        name="orders",
        entrypoint="flows.orders:main",
        sha256="ab" * 32,
        size_bytes=4096,
        description="Order flow",
        input_schema={"type": "object", "required": ["id"]},
        metadata={"team": "payments"},
        filename="order.py",
    )

    row = await persistence.create_image(new)

    assert row == ImageRow(
        image_id="img-1",
        tenant="acme",
        name="orders",
        version=1,
        description="Order flow",
        entrypoint="flows.orders:main",
        input_schema={"type": "object", "required": ["id"]},
        metadata={"team": "payments"},
        sha256="ab" * 32,
        size_bytes=4096,
        created_at_ms=clock(),
        filename="order.py",
    )
    assert await persistence.get_image("img-1") == row


async def test_filename_defaults_to_empty_and_keeps_any_short_text(
    persistence: Persistence,
) -> None:
    plain = await persistence.create_image(new_image("img-plain"))
    odd = "app v2 (final) ü.tar.gz"
    longest = "f" * 252 + ".py"  # 255 bytes

    named = await persistence.create_image(replace(new_image("img-odd"), filename=odd))
    widest = await persistence.create_image(replace(new_image("img-255"), filename=longest))

    assert plain.filename == ""
    assert (await persistence.get_image("img-odd")) == named and named.filename == odd
    assert (await persistence.latest_image("acme", "orders")) == widest
    assert widest.filename == longest


def test_filename_refuses_nul_and_more_than_255_bytes() -> None:
    with pytest.raises(BadRequest, match="filename must not contain NUL"):
        replace(new_image("i"), filename="order\x00.py")
    with pytest.raises(BadRequest, match="filename must be at most 255 bytes"):
        replace(new_image("i"), filename="ü" * 128)  # 256 bytes
    with pytest.raises(BadRequest, match="filename"):
        replace(new_image("i"), filename=None)  # type: ignore[arg-type]


async def test_versions_count_per_tenant_and_name(persistence: Persistence) -> None:
    v1 = await persistence.create_image(new_image("a1"))
    v2 = await persistence.create_image(new_image("a2"))
    other_name = await persistence.create_image(new_image("b1", name="billing"))
    other_tenant = await persistence.create_image(new_image("g1", tenant="globex"))
    v3 = await persistence.create_image(new_image("a3"))

    assert [v1.version, v2.version, v3.version] == [1, 2, 3]
    assert other_name.version == 1 and other_tenant.version == 1
    assert await persistence.latest_image("acme", "orders") == v3
    assert await persistence.latest_image("globex", "billing") is None


async def test_concurrent_registrations_get_distinct_versions(persistence: Persistence) -> None:
    rows = await asyncio.gather(*(persistence.create_image(new_image(f"c{n}")) for n in range(10)))

    assert sorted(r.version for r in rows) == list(range(1, 11))


async def test_duplicate_image_id_conflicts(persistence: Persistence) -> None:
    await persistence.create_image(new_image("same"))
    with pytest.raises(Conflict):
        await persistence.create_image(new_image("same", name="another"))


def test_new_image_rejects_bad_fields() -> None:
    with pytest.raises(BadRequest):
        new_image("")
    with pytest.raises(BadRequest):
        NewImage("i", "t", "n", "m:f", "0", size_bytes=-1)


async def test_get_and_list_are_tenant_scoped(persistence: Persistence) -> None:
    a = await persistence.create_image(new_image("a1"))
    b = await persistence.create_image(new_image("b1", name="billing"))
    g = await persistence.create_image(new_image("g1", tenant="globex"))

    assert await persistence.get_image("a1", tenant="acme") == a
    assert await persistence.get_image("a1", tenant="globex") is None
    assert await persistence.get_image("nope") is None
    assert await persistence.list_images("acme") == [b, a]
    assert await persistence.list_images("acme", name="orders") == [a]
    assert await persistence.list_images() == [b, a, g]
    assert await persistence.list_images("nobody") == []


async def test_delete_refuses_while_unfinished_instances_use_the_image(
    persistence: Persistence, image: ImageRow, make_instance: MakeInstance
) -> None:
    live = await make_instance(status=InstanceStatus.SUSPENDED)
    done = await make_instance(status=InstanceStatus.COMPLETED)
    assert await persistence.count_active_instances_for_image(image.image_id) == 1

    with pytest.raises(InvalidState, match="1 unfinished"):
        await persistence.delete_image(image.image_id)

    await persistence.transition(
        live.instance_id, [InstanceStatus.SUSPENDED], InstanceStatus.CANCELLED
    )
    assert await persistence.count_active_instances_for_image(image.image_id) == 0
    await persistence.delete_image(image.image_id)

    assert await persistence.get_image(image.image_id) is None
    history = await persistence.get_instance(done.instance_id)
    assert history is not None
    assert history.image_id is None
    assert (history.image_name, history.image_version) == (image.name, image.version)


async def test_delete_of_unknown_or_foreign_image_is_not_found(persistence: Persistence) -> None:
    await persistence.create_image(new_image("g1", tenant="globex"))

    with pytest.raises(NotFound):
        await persistence.delete_image("missing")
    with pytest.raises(NotFound):
        await persistence.delete_image("g1", tenant="acme")
    assert await persistence.get_image("g1") is not None
