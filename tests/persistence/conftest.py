"""Helpers for the persistence conformance suite: an image, and instances in a chosen status."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import pytest

from runtara_core.persistence import (
    NO_UPDATE,
    ImageRow,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewImage,
    NewInstance,
    Persistence,
    TerminationReason,
)

TENANT = "acme"

MakeInstance = Callable[..., Awaitable[InstanceRow]]


def new_image(image_id: str, *, tenant: str = TENANT, name: str = "orders") -> NewImage:
    return NewImage(
        image_id=image_id,
        tenant=tenant,
        name=name,
        entrypoint="workflow:main",
        sha256="0" * 64,
        size_bytes=123,
    )


@pytest.fixture
async def image(persistence: Persistence) -> ImageRow:
    return await persistence.create_image(new_image("img-orders-1"))


@pytest.fixture
def make_instance(persistence: Persistence, image: ImageRow) -> MakeInstance:
    """``await make_instance(status=..., reason=..., update=...)``: a new instance in that status.

    The persistence layer enforces compare-and-set, not a state graph, so one transition from
    pending reaches any status.
    """
    counter = itertools.count(1)

    async def make(
        instance_id: str | None = None,
        *,
        status: InstanceStatus = InstanceStatus.PENDING,
        reason: TerminationReason | None = None,
        update: InstanceUpdate = NO_UPDATE,
        image_id: str | None = None,
        **fields: object,
    ) -> InstanceRow:
        new = NewInstance(
            instance_id=instance_id or f"inst-{next(counter)}",
            image_id=image_id or image.image_id,
            **fields,  # type: ignore[arg-type]
        )
        row, created = await persistence.create_instance(new)
        assert created
        if status is InstanceStatus.PENDING and reason is None and update == NO_UPDATE:
            return row
        return await persistence.transition(
            row.instance_id, [InstanceStatus.PENDING], status, reason=reason, update=update
        )

    return make
