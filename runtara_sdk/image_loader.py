"""Load an image's entrypoint: a ``.py`` file (default function ``main``) or a directory
plus ``module:function``. The image's folder goes on ``sys.path`` so its sibling modules import."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtara_sdk.errors import ImageLoadError

DEFAULT_FUNCTION = "main"


def load_entrypoint(image: Path, entrypoint: str | None) -> Callable[..., Any]:
    image = image.resolve()
    try:
        if image.is_file():
            module_name, function = _file_entry(image, entrypoint)
            module = _import_file(image, module_name)
        elif image.is_dir():
            if not entrypoint or ":" not in entrypoint:
                raise ImageLoadError(
                    f"image {image} is a directory: set its entrypoint as module:function "
                    f"(RUNTARA_IMAGE_ENTRYPOINT), got {entrypoint!r}"
                )
            module_name, function = entrypoint.split(":", 1)
            sys.path.insert(0, str(image))
            module = importlib.import_module(module_name)
        else:
            raise ImageLoadError(f"image {image} does not exist (RUNTARA_IMAGE_PATH)")
    except ImageLoadError:
        raise
    except BaseException as error:
        raise ImageLoadError(
            f"importing image {image} failed: {type(error).__name__}: {error}\n{traceback.format_exc()}"
        ) from None
    target = getattr(module, function, None)
    if target is None:
        raise ImageLoadError(f"image {image} has no function {function!r} (entrypoint {entrypoint or function!r})")
    if not inspect.iscoroutinefunction(target):
        raise ImageLoadError(
            f"entrypoint {function!r} of image {image} must be an async @workflow function "
            "(async def main(ctx, input))"
        )
    return target


def _file_entry(image: Path, entrypoint: str | None) -> tuple[str, str]:
    """A file's module name is its stem (stable across launches: stored dataclass types name it)."""
    function = (entrypoint or DEFAULT_FUNCTION).rpartition(":")[2] or DEFAULT_FUNCTION
    module_name = image.stem
    if not module_name.isidentifier():
        raise ImageLoadError(f"image file name {image.name!r} must be a valid Python module name")
    if module_name in sys.modules or module_name in sys.stdlib_module_names:
        raise ImageLoadError(
            f"image file {image.name!r} would shadow the module {module_name!r}; rename the file"
        )
    return module_name, function


def _import_file(image: Path, module_name: str) -> Any:
    sys.path.insert(0, str(image.parent))
    spec = importlib.util.spec_from_file_location(module_name, image)
    if spec is None or spec.loader is None:
        raise ImageLoadError(f"cannot load {image} as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
