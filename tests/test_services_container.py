"""The service's objects live in one typed container, `app.state.services` (audit.services):
no module of the service keeps or reads anything else on `app.state`, only audit/deps.py
reads the container (routes take their services through its typed dependencies), only
audit/app.py sets it, and the real app sets every one of its fields at startup."""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import audit
from audit.app import create_app
from audit.services import Services
from tests.apptools import app_settings

AUDIT = Path(audit.__file__).parent
CONTAINER = "services"  # the one attribute of app.state
READER = "audit/deps.py"  # the one module that reads it
WRITER = "audit/app.py"  # the one module that sets it


def _is_app(node: ast.expr) -> bool:
    """`app`, `<anything>.app` or `<anything>["app"]`: an application object."""
    if isinstance(node, ast.Name):
        return node.id == "app"
    if isinstance(node, ast.Attribute):
        return node.attr == "app"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "app"
    return False


def state_uses(source: str, name: str) -> list[str]:
    """Every use of an app's `state` in `source` (module `name`, relative to the repository)
    that breaks the rule, as `name:line: what`."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr == "state" and _is_app(node.value)):
            continue
        where = f"{name}:{node.lineno}"
        use = parents.get(node)
        if not (isinstance(use, ast.Attribute) and use.value is node):
            # getattr(app.state, ...), vars(app.state), `state = app.state`, ...
            found.append(f"{where}: {ast.unparse(use or node)} (app.state used as a value)")
        elif use.attr != CONTAINER:
            found.append(f"{where}: {ast.unparse(use)} (not app.state.{CONTAINER})")
        elif isinstance(use.ctx, ast.Load) and name != READER:
            found.append(f"{where}: {ast.unparse(use)} read outside {READER}")
        elif not isinstance(use.ctx, ast.Load) and name != WRITER:
            found.append(f"{where}: {ast.unparse(use)} set outside {WRITER}")
    return found


def _modules() -> list[tuple[str, str]]:
    root = AUDIT.parent
    return [
        (path.relative_to(root).as_posix(), path.read_text(encoding="utf-8"))
        for path in sorted(AUDIT.rglob("*.py"))
    ]


def test_no_module_of_the_service_uses_app_state_but_through_the_container() -> None:
    modules = _modules()
    assert len(modules) > 50  # the whole package, not an empty glob
    problems = [problem for name, source in modules for problem in state_uses(source, name)]
    assert problems == []


def test_the_container_is_set_once_and_read_in_one_place() -> None:
    sources = dict(_modules())
    reads = [s for s in state_uses("x = request.app.state.services", "x.py") if "read" in s]
    assert reads  # the check sees a read outside the reader...
    assert state_uses(sources[READER], READER) == []  # ...and allows the reader's
    assert sources[READER].count(f"request.app.state.{CONTAINER}") == 1
    assert sources[WRITER].count(f"app.state.{CONTAINER} = ") == 1


@pytest.mark.parametrize(
    "source",
    [
        "request.app.state.store",
        "app.state.settings = settings",
        "x = scope['app'].state.metrics",
        "getattr(request.app.state, 'servicelog')",
        "setattr(app.state, 'services', None)",
        "vars(self.app.state)",
        "request.app.state.services",  # read outside audit/deps.py
        "app.state.services = services",  # set outside audit/app.py
    ],
)
def test_the_check_finds_every_other_use(source: str) -> None:
    assert state_uses(source, "audit/somewhere.py"), source


def _classes(hint: object) -> tuple[type, ...]:
    """The classes a field's type hint admits, None excluded (`X | None` -> X)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(c for arg in typing.get_args(hint) for c in _classes(arg))
    if hint is type(None):
        return ()
    origin = typing.get_origin(hint)
    cls = origin if origin is not None else hint
    assert isinstance(cls, type), hint
    return (cls,)


def _conforms(value: object, cls: type) -> bool:
    if getattr(cls, "_is_protocol", False) and not getattr(cls, "_is_runtime_protocol", False):
        # A plain Protocol (the event store): the value has every member it declares.
        members = {n for n in vars(cls) if not n.startswith("_")} | set(
            getattr(cls, "__annotations__", {})
        )
        return all(hasattr(value, member) for member in members)
    return isinstance(value, cls)


def test_the_container_is_a_frozen_slotted_dataclass_of_real_types() -> None:
    assert dataclasses.is_dataclass(Services)
    assert Services.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in vars(Services)
    hints = typing.get_type_hints(Services)
    for field in dataclasses.fields(Services):
        assert hints[field.name] is not typing.Any, field.name
        assert _classes(hints[field.name]), field.name


def test_the_real_app_sets_every_service_at_startup(tmp_path: Path) -> None:
    # Every optional part on, so that no field may stay None: the forward server (on an
    # ephemeral loopback port) and the webhook delivery loop.
    settings = app_settings(
        tmp_path, forward_enabled=True, forward_port=0, webhook_delivery_enabled=True
    )
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        state = vars(app.state)["_state"]
        assert set(state) == {CONTAINER}  # one attribute: the container, nothing loose
        services = state[CONTAINER]
        assert isinstance(services, Services)
        hints = typing.get_type_hints(Services)
        for field in dataclasses.fields(Services):
            value = getattr(services, field.name)
            assert value is not None, f"{field.name} not set"
            assert any(_conforms(value, cls) for cls in _classes(hints[field.name])), (
                f"{field.name}: {type(value).__name__} is not {hints[field.name]}"
            )
        with pytest.raises(dataclasses.FrozenInstanceError):
            services.store = services.store  # type: ignore[misc]
        # Built once: the services share one instance of each other, not copies.
        assert services.settings is settings
        assert services.queries.streams is services.streams
        assert services.queries.store is services.store
        assert services.subjects.servicelog is services.servicelog
        assert services.forward is not None
        assert services.forward.port > 0  # started by the lifespan
