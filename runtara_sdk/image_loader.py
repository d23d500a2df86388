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
            _check_not_shadowing(module_name.partition(".")[0], image)
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
    _check_not_shadowing(module_name, image)
    return module_name, function


def _check_not_shadowing(module_name: str, image: Path) -> None:
    """An image module named like one already imported (``json``) would silently be that one."""
    if module_name in sys.modules or module_name in sys.stdlib_module_names:
        raise ImageLoadError(
            f"image {image.name!r}: its module {module_name!r} would shadow the standard or "
            "already imported module of that name; rename it"
        )


def _import_file(image: Path, module_name: str) -> Any:
    sys.path.insert(0, str(image.parent))
    spec = importlib.util.spec_from_file_location(module_name, image)
    if spec is None or spec.loader is None:
        raise ImageLoadError(f"cannot load {image} as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
