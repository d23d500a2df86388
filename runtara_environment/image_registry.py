"""The image registry: workflow code stored under ``DATA_DIR/images/<image_id>/`` plus its row.

An image is never imported or executed here (DESIGN section 8): registration checks the bytes
(size, sha256, kind), unpacks them safely (``image_archive``), checks that the entrypoint names
a file that exists, and only then records the row, so a row always has its files. Deleting
removes the row first (refused while unfinished instances use it), then the files.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtara_core.errors import BadRequest, FrameTooLarge, NotFound
from runtara_core.persistence import Persistence
from runtara_core.persistence.rows import ImageRow, NewImage
from runtara_environment.image_archive import (
    ImageKind,
    ImageRejected,
    check_digest,
    detect_kind,
    unpack_image,
)

log = logging.getLogger(__name__)

DEFAULT_FILE_ENTRYPOINT = "main"
"""A single ``.py`` image runs its ``main`` unless told otherwise (DESIGN section 10)."""


@dataclass(frozen=True, slots=True)
class ImageUpload:
    """What a register request says about the bytes (which come inline or as a stream)."""

    tenant: str
    name: str
    filename: str
    size_bytes: int
    sha256: str
    entrypoint: str | None = None
    description: str = ""
    input_schema: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ImageLocation:
    """Where a launch finds an image: what RUNTARA_IMAGE_PATH / _ENTRYPOINT are set to."""

    path: Path
    entrypoint: str | None


def _entry_module_exists(root: Path, entrypoint: str) -> bool:
    module = entrypoint.partition(":")[0]
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


class ImageRegistry:
    def __init__(self, persistence: Persistence, images_dir: Path, *, max_bytes: int, max_files: int) -> None:
        self._db = persistence
        self._dir = images_dir
        self.max_bytes = max_bytes
        self._max_files = max_files

    def location(self, image: ImageRow) -> ImageLocation:
        root = self._dir / image.image_id
        if image.filename.endswith(".py"):
            return ImageLocation(root / image.filename, image.entrypoint)
        return ImageLocation(root, image.entrypoint)

    async def collect(self, upload: ImageUpload, chunks: AsyncIterable[bytes]) -> bytes:
        """The streamed bytes of an image, refused as soon as they exceed what was announced."""
        self.check_size(upload.size_bytes)
        data = bytearray()
        async for chunk in chunks:
            data += chunk
            if len(data) > upload.size_bytes:
                raise ImageRejected(
                    f"the image stream carries more than the {upload.size_bytes} bytes announced "
                    "in size_bytes"
                )
        return bytes(data)

    def check_size(self, size_bytes: int) -> None:
        if size_bytes > self.max_bytes:
            raise FrameTooLarge(
                f"image of {size_bytes} bytes exceeds the limit of {self.max_bytes} bytes "
                "(RUNTARA_MAX_IMAGE_BYTES)"
            )

    async def register(self, upload: ImageUpload, data: bytes) -> ImageRow:
        self.check_size(upload.size_bytes)
        check_digest(data, upload.size_bytes, upload.sha256)
        kind = detect_kind(upload.filename, data)
        if kind is not ImageKind.PY_FILE and not upload.entrypoint:
            raise ImageRejected(
                f"image {upload.filename!r} is an archive: give its entrypoint as "
                "module:function (for example --entrypoint app:main)"
            )
        image_id = f"img-{uuid.uuid4().hex[:20]}"
        destination = self._dir / image_id
        unpacking = asyncio.get_running_loop().run_in_executor(
            None,
            lambda: unpack_image(
                data,
                kind,
                destination,
                filename=upload.filename,
                max_unpacked_bytes=self.max_bytes,
                max_files=self._max_files,
            ),
        )
        try:
            await asyncio.shield(unpacking)
        except asyncio.CancelledError:
            # The request went away mid-unpack: let the thread finish, then remove what it made.
            await asyncio.gather(unpacking, return_exceptions=True)
            shutil.rmtree(destination, ignore_errors=True)
            raise
        try:
            if kind is not ImageKind.PY_FILE and not _entry_module_exists(destination, upload.entrypoint or ""):
                raise ImageRejected(
                    f"entrypoint {upload.entrypoint!r}: the archive has no module "
                    f"{upload.entrypoint.partition(':')[0]!r} (files are stored relative to "  # type: ignore[union-attr]
                    "the archive's single top-level directory, if it has one)"
                )
            row = await self._db.create_image(
                NewImage(
                    image_id=image_id,
                    tenant=upload.tenant,
                    name=upload.name,
                    entrypoint=upload.entrypoint or DEFAULT_FILE_ENTRYPOINT,
                    sha256=upload.sha256.lower(),
                    size_bytes=upload.size_bytes,
                    description=upload.description,
                    input_schema=upload.input_schema,
                    metadata=upload.metadata or {},
                    filename=upload.filename,
                )
            )
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
        log.info("registered image %s (%s v%d) for tenant %s", row.image_id, row.name, row.version, row.tenant)
        return row

    async def resolve(self, ref: str, tenant: str | None) -> ImageRow:
        """An image id, or a name meaning its latest version, visible to ``tenant`` (None: all).

        Another tenant's image is NotFound with the same message as a missing one.
        """
        row = await self._db.get_image(ref, tenant)
        if row is None and tenant is not None:
            row = await self._db.latest_image(tenant, ref)
        elif row is None:
            matches = await self._db.list_images(None, name=ref)
            tenants = {r.tenant for r in matches}
            if len(tenants) > 1:
                raise BadRequest(
                    f"image name {ref!r} exists in several tenants ({', '.join(sorted(tenants))}): "
                    "name the tenant, or give the image id"
                )
            if matches:
                row = max(matches, key=lambda r: r.version)
        if row is None:
            raise NotFound(f"image {ref!r} not found")
        return row

    async def delete(self, image: ImageRow) -> None:
        await self._db.delete_image(image.image_id, image.tenant)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(self._dir / image.image_id, ignore_errors=True)
        )
        log.info("deleted image %s (%s v%d)", image.image_id, image.name, image.version)

