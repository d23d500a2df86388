"""Loading an image's entrypoint from a ``.py`` file or a directory."""

from __future__ import annotations

import inspect
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtara_sdk.errors import ImageLoadError
from runtara_sdk.image_loader import load_entrypoint

WORKFLOW = """
from runtara_sdk import workflow

@workflow
async def main(ctx, input):
    return "main"

@workflow
async def other(ctx, input):
    return "other"

def sync_entry(ctx, input):
    return "sync"
"""


@pytest.fixture(autouse=True)
def clean_imports() -> Iterator[None]:
    """The loader adds to sys.path and sys.modules: undo it after each test."""
    path = list(sys.path)
    modules = set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]


def unique(prefix: str = "img") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def run(fn: object) -> object:
    """The entrypoint's result (it awaits nothing, so one send finishes it)."""
    assert inspect.iscoroutinefunction(fn)
    coroutine = fn(None, None)  # type: ignore[operator]
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("entrypoint did not finish")


def test_file_default_entrypoint_is_main(tmp_path: Path) -> None:
    image = write(tmp_path / f"{unique()}.py", WORKFLOW)
    assert run(load_entrypoint(image, None)) == "main"


def test_file_module_is_named_after_its_stem(tmp_path: Path) -> None:
    """Stored dataclass types name this module, so it must stay the same across launches."""
    name = unique()
    fn = load_entrypoint(write(tmp_path / f"{name}.py", WORKFLOW), None)
    assert fn.__module__ == name
    assert sys.modules[name].main is fn


@pytest.mark.parametrize("entry", ["other", "anything:other", ":other"])
def test_file_named_function(tmp_path: Path, entry: str) -> None:
    image = write(tmp_path / f"{unique()}.py", WORKFLOW)
    assert run(load_entrypoint(image, entry)) == "other"


def test_file_entrypoint_with_empty_function_defaults_to_main(tmp_path: Path) -> None:
    image = write(tmp_path / f"{unique()}.py", WORKFLOW)
    assert run(load_entrypoint(image, "file:")) == "main"


def test_file_can_import_its_siblings(tmp_path: Path) -> None:
    helper = unique("helper")
    write(tmp_path / f"{helper}.py", "VALUE = 'from sibling'\n")
    image = write(
        tmp_path / f"{unique()}.py",
        f"""
        import {helper}

        async def main(ctx, input):
            return {helper}.VALUE
        """,
    )
    assert run(load_entrypoint(image, None)) == "from sibling"


def test_directory_with_module_and_sibling_import(tmp_path: Path) -> None:
    package, helper = unique("app"), unique("util")
    folder = tmp_path / "image"
    folder.mkdir()
    write(folder / f"{helper}.py", "def greet():\n    return 'hello'\n")
    write(
        folder / f"{package}.py",
        f"""
        from {helper} import greet

        async def entry(ctx, input):
            return greet()
        """,
    )
    assert run(load_entrypoint(folder, f"{package}:entry")) == "hello"


def test_directory_with_package_module(tmp_path: Path) -> None:
    package = unique("pkg")
    (tmp_path / package).mkdir()
    write(tmp_path / package / "__init__.py", "")
    write(tmp_path / package / "flows.py", "async def run(ctx, input):\n    return 'pkg'\n")
    assert run(load_entrypoint(tmp_path, f"{package}.flows:run")) == "pkg"


@pytest.mark.parametrize("entry", [None, "", "main"])
def test_directory_without_module_function_entrypoint(tmp_path: Path, entry: str | None) -> None:
    with pytest.raises(ImageLoadError, match="module:function"):
        load_entrypoint(tmp_path, entry)


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_entrypoint(tmp_path / "nowhere.py", None)


def test_missing_function_in_file(tmp_path: Path) -> None:
    image = write(tmp_path / f"{unique()}.py", WORKFLOW)
    with pytest.raises(ImageLoadError, match="no function 'absent'"):
        load_entrypoint(image, "absent")


def test_missing_default_main(tmp_path: Path) -> None:
    image = write(tmp_path / f"{unique()}.py", "async def other(ctx, input): ...\n")
    with pytest.raises(ImageLoadError, match="no function 'main'"):
        load_entrypoint(image, None)


def test_missing_function_in_directory_module(tmp_path: Path) -> None:
    module = unique("app")
    write(tmp_path / f"{module}.py", "X = 1\n")
    with pytest.raises(ImageLoadError, match="no function 'main'"):
        load_entrypoint(tmp_path, f"{module}:main")


def test_missing_module_in_directory(tmp_path: Path) -> None:
    module = unique("absent")
    with pytest.raises(ImageLoadError, match=f"ModuleNotFoundError.*{module}"):
        load_entrypoint(tmp_path, f"{module}:main")


def test_sync_entrypoint_is_refused(tmp_path: Path) -> None:
    image = write(tmp_path / f"{unique()}.py", WORKFLOW)
    with pytest.raises(ImageLoadError, match="must be an async"):
        load_entrypoint(image, "sync_entry")


def test_non_function_attribute_is_refused(tmp_path: Path) -> None:
    image = write(tmp_path / f"{unique()}.py", "main = 42\n")
    with pytest.raises(ImageLoadError, match="must be an async"):
        load_entrypoint(image, None)


def test_syntax_error_carries_the_traceback(tmp_path: Path) -> None:
    image = write(tmp_path / f"{unique()}.py", "async def main(ctx, input)\n    return 1\n")
    with pytest.raises(ImageLoadError) as caught:
        load_entrypoint(image, None)
    message = str(caught.value)
    assert "SyntaxError" in message
    assert "Traceback (most recent call last)" in message
    assert image.name in message


def test_error_at_import_time_carries_the_traceback(tmp_path: Path) -> None:
    image = write(
        tmp_path / f"{unique()}.py",
        """
        def explode():
            raise RuntimeError("config missing")

        explode()
        """,
    )
    with pytest.raises(ImageLoadError) as caught:
        load_entrypoint(image, None)
    message = str(caught.value)
    assert "RuntimeError: config missing" in message
    assert "in explode" in message


def test_system_exit_at_import_becomes_an_image_error(tmp_path: Path) -> None:
    image = write(tmp_path / f"{unique()}.py", "raise SystemExit(3)\n")
    with pytest.raises(ImageLoadError, match="SystemExit"):
        load_entrypoint(image, None)


@pytest.mark.parametrize("stem", ["json", "asyncio", "os"])
def test_file_named_like_a_stdlib_module_is_refused(tmp_path: Path, stem: str) -> None:
    image = write(tmp_path / f"{stem}.py", WORKFLOW)
    with pytest.raises(ImageLoadError, match="shadow"):
        load_entrypoint(image, None)


def test_file_named_like_a_loaded_module_is_refused(tmp_path: Path) -> None:
    image = write(tmp_path / "pytest.py", WORKFLOW)
    with pytest.raises(ImageLoadError, match="shadow"):
        load_entrypoint(image, None)


def test_file_name_that_is_not_an_identifier_is_refused(tmp_path: Path) -> None:
    image = write(tmp_path / "my-flow.py", WORKFLOW)
    with pytest.raises(ImageLoadError, match="valid Python module name"):
        load_entrypoint(image, None)


def test_directory_entrypoint_module_named_like_a_stdlib_module_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    write(folder / "json.py", WORKFLOW)
    with pytest.raises(ImageLoadError, match="shadow"):
        load_entrypoint(folder, "json:main")
