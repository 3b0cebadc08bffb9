"""Each identifier is typed once: audit action names in each app's audit_actions.py, gate check names in
studies.choices.GateCheck. Code elsewhere names them through those, so a typo is an import error, not a
silent new action or a check no panel recognises."""

import re
from pathlib import Path

import pytest

from aggregation.audit_actions import AggregationAction
from consortium.audit_actions import ConsortiumAction
from sites.audit_actions import SiteAction
from studies.audit_actions import StudyAction
from studies.choices import GateCheck

ROOT = Path(__file__).resolve().parents[1]
APPS = {"consortium": ConsortiumAction, "sites": SiteAction, "studies": StudyAction, "aggregation": AggregationAction}


def _values(names: type) -> dict[str, str]:
    return {name: value for name, value in vars(names).items() if name.isupper()}


def _sources() -> list[Path]:
    return [path for app in APPS for path in (ROOT / app).rglob("*.py")
            if "migrations" not in path.parts and path.name != "audit_actions.py"]


@pytest.mark.parametrize("app", APPS)
def test_each_app_names_its_own_actions_once(app):
    values = _values(APPS[app])
    assert values and all(value.startswith(f"{app}.") for value in values.values())
    assert len(set(values.values())) == len(values)


def test_no_action_name_is_typed_outside_the_audit_actions_modules():
    actions = {value for names in APPS.values() for value in _values(names).values()}
    typed = [(path.relative_to(ROOT).as_posix(), literal) for path in _sources()
             for literal in re.findall(r"[\"']([a-z_]+\.[a-z_]+\.[a-z_]+)[\"']", path.read_text())
             if literal in actions]
    assert typed == []


def test_the_overview_links_only_gate_checks_that_exist():
    template = (ROOT / "templates" / "aggregation" / "_overview_warnings.html").read_text()
    kinds = set(re.findall(r'w\.kind == "([a-z_]+)"', template))
    assert kinds and kinds <= {*GateCheck.values, "round"}  # "round": a blocked round (aggregation.overview)
