"""One permission table for the API and the console (audit.auth.policy): every route's role
check reads it, and its rules are the ones the brief promises."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from audit.auth.policy import Permission, authorize, holds, reads, scope
from audit.auth.tokens import Principal, ReadScope, Role
from audit.errors import ForbiddenError
from audit.settings import AuditSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = AuditSettings(database_url="sqlite://")


def who(*roles: Role, mfa: bool = True) -> Principal:
    return Principal("p", "t", frozenset(roles), frozenset({"otp"} if mfa else {"pwd"}))


def test_routes_check_roles_only_through_the_permission_table() -> None:
    # A role tuple in a route module is a second table that can drift from the console's.
    for path in sorted((ROOT / "audit").glob("*/routes.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert node.value.id != "Role", f"{path}: Role.{node.attr} outside the policy"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "allow":
                assert isinstance(node.args[-1], ast.Attribute), ast.unparse(node)
                assert getattr(node.args[-1].value, "id", None) == "Permission", ast.unparse(node)


def test_admin_grants_only_with_a_second_factor() -> None:
    authorize(who(Role.ADMIN), SETTINGS, Permission.MANAGE_RETENTION)
    with pytest.raises(ForbiddenError, match="second factor"):
        authorize(who(Role.ADMIN, mfa=False), SETTINGS, Permission.MANAGE_RETENTION)
    # A role the permission accepts without MFA still counts for an admin without one.
    authorize(who(Role.ADMIN, Role.SECURITY, mfa=False), SETTINGS, Permission.MANAGE_WEBHOOKS)


def test_a_subject_reads_only_its_own_records_and_nothing_else() -> None:
    subject = who(Role.SUBJECT)
    assert scope(subject, SETTINGS, Permission.READ_EVENTS) is ReadScope.OWN
    assert reads(subject, SETTINGS, Permission.READ_EVENTS)
    assert not any(holds(subject, SETTINGS, p) for p in Permission)
    # Roles never widen one another: an engineer who is also a subject reads its own.
    both = who(Role.SUBJECT, Role.ENGINEER)
    assert scope(both, SETTINGS, Permission.READ_EVENTS) is ReadScope.OWN
    assert holds(both, SETTINGS, Permission.READ_JOBS)


def test_open_mode_passes_and_every_permission_names_roles() -> None:
    for permission in Permission:
        assert permission.roles, permission
        authorize(None, SETTINGS, permission)
    assert scope(None, SETTINGS, Permission.READ_EVENTS) is ReadScope.TENANT
