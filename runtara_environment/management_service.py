"""The management protocol (DESIGN section 4): one handler per op, every one tenant-scoped.

A connection must say ``hello`` with a bearer token first; the principal it proves is kept on
the session and decides what every later request may see (``management_tokens``). Rows of
another tenant are answered exactly like missing ones. Handlers translate between wire
messages and the registry, the persistence layer and the supervisor, and hold no state of
their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

import jsonschema

from runtara_core.config import Settings
from runtara_core.errors import BadRequest, InvalidState, NotFound, Unauthenticated
from runtara_core.persistence import Persistence
from runtara_core.persistence.rows import (
    EventType,
    ImageRow,
    InstanceFilter,
    InstanceOrder,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    NewInstance,
    SignalType,
    TerminationReason,
)
from runtara_core.persistence.rows import EventRow as EventRecord
from runtara_core.persistence.rules import Clock
from runtara_core.signal_notifier import SignalNotifier
from runtara_core.transport.quic_server import Session
from runtara_core.wire import management_messages as m
from runtara_core.wire.dispatch import RequestBody, ResponseStream, Route, routes
from runtara_environment.image_registry import ImageRegistry, ImageUpload
from runtara_environment.management_tokens import ManagementTokens, Principal
from runtara_environment.process_runner import run_dir_of
from runtara_environment.supervisor import Supervisor

log = logging.getLogger(__name__)

VERSION = "0.1.0"
DEFAULT_TENANT = "default"
"""Where an admin's image goes when the register request names no tenant."""
WATCH_POLL_S = 0.05
"""How often a watch looks for new events of its instance."""
TERMINAL = frozenset({InstanceStatus.COMPLETED, InstanceStatus.FAILED, InstanceStatus.CANCELLED})

_ORDERS = {
    "created_at": InstanceOrder.CREATED_ASC,
    "-created_at": InstanceOrder.CREATED_DESC,
    "finished_at": InstanceOrder.FINISHED_ASC,
    "-finished_at": InstanceOrder.FINISHED_DESC,
}


def _json(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def image_detail(row: ImageRow) -> m.ImageDetail:
    return m.ImageDetail(
        image_id=row.image_id,
        tenant=row.tenant,
        name=row.name,
        version=row.version,
        description=row.description,
        entrypoint=row.entrypoint or None,
        filename=row.filename,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        metadata={str(k): str(v) for k, v in row.metadata.items()},
        has_input_schema=row.input_schema is not None,
        created_at_ms=row.created_at_ms,
        input_schema=dict(row.input_schema) if row.input_schema is not None else None,
    )


def image_summary(row: ImageRow) -> m.ImageSummary:
    return m.ImageSummary(**image_detail(row).model_dump(exclude={"input_schema"}))


def _summary_fields(row: InstanceRow) -> dict[str, Any]:
    return {
        "instance_id": row.instance_id,
        "tenant": row.tenant,
        "image": row.image_id or f"{row.image_name} v{row.image_version} (deleted)",
        "image_name": row.image_name,
        "status": row.status.value,
        "termination_reason": row.termination_reason.value if row.termination_reason else None,
        "attempt": row.attempt,
        "input": _json(row.input),
        "output": _json(row.output),
        "error": row.error,
        "priority": row.priority,
        "created_at_ms": row.created_at_ms,
        "started_at_ms": row.started_at_ms,
        "finished_at_ms": row.finished_at_ms,
    }


def instance_detail(row: InstanceRow, *, run_dir_removed: bool = False) -> m.InstanceDetail:
    return m.InstanceDetail(
        **_summary_fields(row),
        max_attempts=row.max_attempts,
        timeout_s=row.timeout_ms / 1000 if row.timeout_ms is not None else None,
        checkpoint_id=row.checkpoint_id,
        wake_at_ms=row.wake_at_ms,
        heartbeat_at_ms=row.heartbeat_at_ms,
        stderr_tail=row.stderr_tail,
        peak_rss_bytes=row.peak_rss_bytes,
        cpu_time_ms=row.cpu_time_ms,
        run_dir_removed=run_dir_removed,
    )


def event_message(row: EventRecord) -> m.EventRow:
    return m.EventRow(
        event_id=row.id,
        instance_id=row.instance_id,
        type=row.type.value,
        subtype=row.subtype,
        payload=row.payload,
        created_at_ms=row.created_at_ms,
    )


def status_message(row: InstanceRow) -> m.InstanceStatusResponse:
    return m.InstanceStatusResponse(
        instance_id=row.instance_id,
        status=row.status.value,
        termination_reason=row.termination_reason.value if row.termination_reason else None,
    )


def check_input(schema: Any, value: Any) -> None:
    """The start's input against the image's JSON schema; BadRequest naming where it fails."""
    if schema is None:
        return
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(the input itself)"
        raise BadRequest(f"input does not match the image's schema at {where}: {error.message}") from None
    except jsonschema.SchemaError as error:
        raise BadRequest(f"the image's input schema is invalid: {error.message}") from None


def check_schema(schema: Any) -> None:
    if schema is None:
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise BadRequest(f"input_schema is not a valid JSON schema: {error.message}") from None


class ManagementService:
    def __init__(
        self,
        persistence: Persistence,
        settings: Settings,
        *,
        tokens: ManagementTokens,
        registry: ImageRegistry,
        supervisor: Supervisor,
        notifier: SignalNotifier,
        clock: Clock,
    ) -> None:
        self._db = persistence
        self._settings = settings
        self._tokens = tokens
        self._registry = registry
        self._supervisor = supervisor
        self._notifier = notifier
        self._clock = clock
        self._started = time.monotonic()

    def routes(self) -> dict[str, Route[Any, Session]]:
        return routes(
            Route(m.HelloRequest, self.hello),
            Route(m.HealthRequest, self.health),
            Route(m.RegisterImageRequest, self.register_image, mode="upload"),
            Route(m.ListImagesRequest, self.list_images),
            Route(m.GetImageRequest, self.get_image),
            Route(m.DeleteImageRequest, self.delete_image),
            Route(m.StartInstanceRequest, self.start_instance),
            Route(m.StopInstanceRequest, self.stop_instance),
            Route(m.ResumeInstanceRequest, self.resume_instance),
            Route(m.SendSignalRequest, self.send_signal),
            Route(m.SendCustomSignalRequest, self.send_custom_signal),
            Route(m.GetInstanceRequest, self.get_instance),
            Route(m.ListInstancesRequest, self.list_instances),
            Route(m.ListCheckpointsRequest, self.list_checkpoints),
            Route(m.GetCheckpointRequest, self.get_checkpoint),
            Route(m.ListEventsRequest, self.list_events),
            Route(m.WatchRequest, self.watch, mode="server_stream"),
        )

    # ------------------------------------------------------------------ auth

    async def hello(self, request: m.HelloRequest, session: Session) -> m.HelloResponse:
        session.state = None  # a failed hello leaves the connection unauthenticated
        principal = self._tokens.verify(request.token)
        session.state = principal
        return m.HelloResponse(tenant=principal.tenant, admin=principal.is_admin)

    @staticmethod
    def _principal(session: Session) -> Principal:
        principal = session.state
        if not isinstance(principal, Principal):
            raise Unauthenticated("say hello with a bearer token first (RUNTARA_TOKEN)")
        return principal

    async def _instance(self, session: Session, instance_id: str) -> InstanceRow:
        principal = self._principal(session)
        row = await self._db.get_instance(instance_id)
        principal.require_visible(row.tenant if row else None, f"instance {instance_id!r}")
        assert row is not None
        return row

    # ------------------------------------------------------------------ health

    async def health(self, request: m.HealthRequest, session: Session) -> m.HealthResponse:
        principal = self._principal(session)
        counts = await self._db.count_by_status(principal.tenant)
        return m.HealthResponse(
            version=VERSION,
            uptime_s=round(time.monotonic() - self._started, 3),
            node_id=self._supervisor.node_id,
            instances={status.value: count for status, count in counts.items()},
        )

    # ------------------------------------------------------------------ images

    async def register_image(
        self, request: m.RegisterImageRequest, session: Session, body: RequestBody
    ) -> m.ImageDetail:
        principal = self._principal(session)
        tenant = principal.scope(request.tenant) or DEFAULT_TENANT
        check_schema(request.input_schema)
        upload = ImageUpload(
            tenant=tenant,
            name=request.name,
            filename=request.filename,
            size_bytes=request.size_bytes,
            sha256=request.sha256,
            entrypoint=request.entrypoint,
            description=request.description,
            input_schema=request.input_schema,
            metadata=dict(request.metadata),
        )
        if request.data is not None:
            async for chunk in body:
                if chunk:
                    raise BadRequest("register_image carries its bytes in 'data' or after the frame, not both")
            data = request.data
        else:
            data = await self._registry.collect(upload, body)
        return image_detail(await self._registry.register(upload, data))

    async def list_images(self, request: m.ListImagesRequest, session: Session) -> m.ImagePage:
        tenant = self._principal(session).scope(request.tenant)
        rows = await self._db.list_images(tenant, name=request.name)
        page = rows[request.offset : request.offset + request.limit]
        return m.ImagePage(items=[image_summary(r) for r in page], total=len(rows))

    async def get_image(self, request: m.GetImageRequest, session: Session) -> m.ImageDetail:
        tenant = self._principal(session).scope(request.tenant)
        return image_detail(await self._registry.resolve(request.image, tenant))

    async def delete_image(self, request: m.DeleteImageRequest, session: Session) -> m.DeleteImageResponse:
        tenant = self._principal(session).scope(request.tenant)
        image = await self._registry.resolve(request.image, tenant)
        await self._registry.delete(image)
        return m.DeleteImageResponse(image_id=image.image_id)

    # ------------------------------------------------------------------ starting

    async def start_instance(
        self, request: m.StartInstanceRequest, session: Session
    ) -> m.StartInstanceResponse:
        tenant = self._principal(session).scope(request.tenant)
        image = await self._registry.resolve(request.image, tenant)
        if request.instance_id is not None:
            existing = await self._db.get_instance(request.instance_id)
            if existing is not None:
                self._principal(session).require_visible(existing.tenant, f"instance {request.instance_id!r}")
                return m.StartInstanceResponse(
                    instance_id=existing.instance_id, status=existing.status.value, created=False
                )
        check_input(image.input_schema, request.input)
        timeout_s = request.timeout_s if request.timeout_s is not None else self._settings.default_timeout_s
        row, created = await self._db.create_instance(
            NewInstance(
                instance_id=request.instance_id or f"{image.name[:200]}-{uuid.uuid4().hex[:12]}",
                image_id=image.image_id,
                input=json.dumps(request.input).encode(),
                max_attempts=request.max_attempts or self._settings.default_max_attempts,
                timeout_ms=max(1, int(timeout_s * 1000)) if timeout_s is not None else None,
                priority=request.priority,
                env=dict(request.env),
                node_id=self._supervisor.node_id,
            )
        )
        if created:
            self._supervisor.poke()
        return m.StartInstanceResponse(instance_id=row.instance_id, status=row.status.value, created=created)

    # ------------------------------------------------------------------ stopping, signals

    async def stop_instance(
        self, request: m.StopInstanceRequest, session: Session
    ) -> m.InstanceStatusResponse:
        row = await self._instance(session, request.instance_id)
        if row.is_terminal:
            return status_message(row)
        try:
            row = await self._cancel_at_once(row.instance_id, TerminationReason.STOPPED)
            # A launch still starting (its register will be refused) or exiting: end it too.
            self._supervisor.stop_launch(row.instance_id, request.grace_s)
            return status_message(row)
        except InvalidState:
            pass  # running: the process must be stopped
        if not self._supervisor.stop_launch(row.instance_id, request.grace_s):
            # Running without a process here (launched by another node, or its launch is
            # exiting): ask it to cancel.
            await self._put_signal(row.instance_id, SignalType.CANCEL)
            await self._cancel_if_hibernated(row.instance_id, TerminationReason.STOPPED)
        return status_message(await self._instance(session, request.instance_id))

    async def _cancel_if_hibernated(self, instance_id: str, reason: TerminationReason) -> None:
        """After a cancel signal was stored for a running instance: if the launch hibernated or
        paused in between (and its exit was handled before the signal was there to see), nobody
        would act on the signal until a wake, possibly never. Cancel it at once, as for any
        suspended instance."""
        with contextlib.suppress(InvalidState):
            await self._cancel_at_once(instance_id, reason)
            await self._db.ack_signal(instance_id, SignalType.CANCEL)

    async def _cancel_at_once(self, instance_id: str, reason: TerminationReason) -> InstanceRow:
        """Cancel an instance that has no running launch; InvalidState if it is running."""
        return await self._db.transition(
            instance_id,
            {InstanceStatus.PENDING, InstanceStatus.SUSPENDED},
            InstanceStatus.CANCELLED,
            reason=reason,
            event=NewEvent(EventType.CANCELLED, subtype=reason.value),
        )

    async def _put_signal(self, instance_id: str, signal_type: SignalType) -> None:
        await self._db.put_signal(instance_id, signal_type)
        self._notifier.signal_stored(instance_id)

    async def send_signal(self, request: m.SendSignalRequest, session: Session) -> m.InstanceStatusResponse:
        row = await self._instance(session, request.instance_id)
        signal_type = SignalType(request.signal)
        if row.is_terminal:
            raise InvalidState(f"instance {row.instance_id!r} is {row.status.value}: it takes no more signals")
        if signal_type is SignalType.RESUME and row.status is InstanceStatus.SUSPENDED:
            return await self._resume(row, session)
        if signal_type is SignalType.PAUSE and row.termination_reason is TerminationReason.PAUSED:
            # Already paused: nothing to do. Stored, this pause would outlive the next resume and
            # pause the relaunched instance again at once (a retried pause undid the resume).
            return status_message(row)
        if signal_type is SignalType.CANCEL:
            try:
                return status_message(await self._cancel_at_once(row.instance_id, TerminationReason.CANCELLED))
            except InvalidState:
                pass  # it is running: it must act on the signal itself
        await self._put_signal(row.instance_id, signal_type)
        await self._db.append_event(row.instance_id, NewEvent(EventType.SIGNAL, subtype=signal_type.value))
        if signal_type is SignalType.CANCEL:
            await self._cancel_if_hibernated(row.instance_id, TerminationReason.CANCELLED)
        return status_message(await self._instance(session, row.instance_id))

    async def send_custom_signal(
        self, request: m.SendCustomSignalRequest, session: Session
    ) -> m.InstanceStatusResponse:
        row = await self._instance(session, request.instance_id)
        if row.is_terminal:
            raise InvalidState(f"instance {row.instance_id!r} is {row.status.value}: it takes no more signals")
        enqueued = await self._db.enqueue_custom_signal(
            row.instance_id, request.name, json.dumps(request.payload).encode()
        )
        self._notifier.custom_signal_stored(row.instance_id, request.name, enqueued.signal.id)
        if enqueued.woken is not None:
            self._supervisor.poke()
            return status_message(enqueued.woken)
        return status_message(row)

    async def resume_instance(
        self, request: m.ResumeInstanceRequest, session: Session
    ) -> m.InstanceStatusResponse:
        return await self._resume(await self._instance(session, request.instance_id), session)

    async def _resume(self, row: InstanceRow, session: Session) -> m.InstanceStatusResponse:
        if row.status is InstanceStatus.SUSPENDED and row.termination_reason is TerminationReason.PAUSED:
            update = InstanceUpdate()
            expected = {InstanceStatus.SUSPENDED}
        elif row.status is InstanceStatus.FAILED:
            update = InstanceUpdate(attempt=row.attempt + 1, finished_at_ms=None, error=None, output=None)
            expected = {InstanceStatus.FAILED}
        else:
            reason = f" ({row.termination_reason.value})" if row.termination_reason else ""
            raise InvalidState(
                f"instance {row.instance_id!r} is {row.status.value}{reason}: only paused or failed "
                "instances can be resumed"
            )
        moved = await self._db.transition(
            row.instance_id,
            expected,
            InstanceStatus.PENDING,
            update=update,
            event=NewEvent(EventType.RESUMED),
        )
        self._supervisor.poke()
        return status_message(moved)

    # ------------------------------------------------------------------ reading

    async def get_instance(self, request: m.GetInstanceRequest, session: Session) -> m.InstanceDetail:
        row = await self._instance(session, request.instance_id)
        return instance_detail(row, run_dir_removed=self._run_dir_removed(row))

    def _run_dir_removed(self, row: InstanceRow) -> bool:
        """A finished instance launched here whose run directory is gone (``run_retention``)."""
        if not row.is_terminal or row.pid is None or row.node_id not in (None, self._supervisor.node_id):
            return False
        try:
            return not run_dir_of(self._supervisor.runs_dir, row.instance_id).exists()
        except OSError:
            return False

    async def list_instances(self, request: m.ListInstancesRequest, session: Session) -> m.InstancePage:
        tenant = self._principal(session).scope(request.tenant)
        image_id = image_name = None
        if request.image is not None:
            image = await self._db.get_image(request.image, tenant)
            if image is not None:
                image_id = image.image_id
            else:
                image_name = request.image
        page = await self._db.list_instances(
            InstanceFilter(
                tenant=tenant,
                statuses=frozenset(InstanceStatus(s) for s in request.status or ()),
                image_id=image_id,
                image_name=image_name,
                created_from_ms=request.created_after_ms,
                created_to_ms=request.created_before_ms,
                finished_from_ms=request.finished_after_ms,
                finished_to_ms=request.finished_before_ms,
                order=_ORDERS[request.order],
                limit=request.limit,
                offset=min(request.offset, 2**62),
            )
        )
        return m.InstancePage(
            items=[m.InstanceSummary(**_summary_fields(r)) for r in page.items], total=page.total
        )

    async def list_checkpoints(
        self, request: m.ListCheckpointsRequest, session: Session
    ) -> m.CheckpointPage:
        row = await self._instance(session, request.instance_id)
        page = await self._db.list_checkpoints(
            row.instance_id, limit=request.limit, offset=min(request.offset, 2**62), with_state=request.with_state
        )
        return m.CheckpointPage(
            items=[
                m.CheckpointRow(
                    checkpoint_id=c.checkpoint_id, created_at_ms=c.created_at_ms, size_bytes=c.size_bytes, state=c.state
                )
                for c in page.items
            ],
            total=page.total,
        )

    async def get_checkpoint(self, request: m.GetCheckpointRequest, session: Session) -> m.CheckpointRow:
        row = await self._instance(session, request.instance_id)
        checkpoint = await self._db.get_checkpoint(row.instance_id, request.checkpoint_id)
        if checkpoint is None:
            raise NotFound(f"checkpoint {request.checkpoint_id!r} of instance {row.instance_id!r} not found")
        return m.CheckpointRow(
            checkpoint_id=checkpoint.checkpoint_id,
            created_at_ms=checkpoint.created_at_ms,
            size_bytes=checkpoint.size_bytes,
            state=checkpoint.state,
        )

    async def list_events(self, request: m.ListEventsRequest, session: Session) -> m.EventPage:
        row = await self._instance(session, request.instance_id)
        events = await self._db.list_events(row.instance_id, after_id=request.after_id, limit=request.limit)
        total = len(events)
        if total == request.limit:  # maybe more: count them without reading them
            total = await self._db.count_events(row.instance_id, after_id=request.after_id)
        return m.EventPage(items=[event_message(e) for e in events], total=total)

    async def watch(self, request: m.WatchRequest, session: Session, out: ResponseStream) -> m.WatchFrame:
        """Every event of one instance as it happens, then an ``end`` frame once it is terminal."""
        if request.instance_id is None:
            raise BadRequest("watch needs an instance_id (watching a whole tenant is not available yet)")
        row = await self._instance(session, request.instance_id)
        after = request.after_id
        while True:
            events = await self._db.list_events(row.instance_id, after_id=after, limit=500)
            for event in events:
                await out.send(m.WatchFrame(frame="event", event=event_message(event)))
                after = event.id
            if len(events) == 500:
                continue
            current = await self._db.get_instance(row.instance_id)
            if current is None or current.status in TERMINAL:
                # Events written with the final transition are already visible: one last look.
                for event in await self._db.list_events(row.instance_id, after_id=after, limit=500):
                    await out.send(m.WatchFrame(frame="event", event=event_message(event)))
                return m.WatchFrame(
                    frame="end",
                    status=current.status.value if current else None,
                    termination_reason=current.termination_reason.value
                    if current and current.termination_reason
                    else None,
                )
            await asyncio.sleep(WATCH_POLL_S)
