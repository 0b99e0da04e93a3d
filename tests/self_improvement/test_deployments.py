"""The four issue-6 deployments in prefect.yaml: entrypoints resolve to flows of the same name."""

from __future__ import annotations

import pytest
import yaml

from core.environment import REPO_ROOT
from core.settings import load_settings

pytestmark = pytest.mark.tc("TC-ASYNC-100", "TC-ASYNC-101")


def test_self_improvement_deployments() -> None:
    deps = {
        d["name"]: d
        for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    }
    expected = {
        "llm-self-analysis": ("scheduled", [{"cron": "0 3 * * *", "timezone": "UTC"}]),
        "adaptive-retrain": ("analysis", None),
        "emergency-strategy-disable": ("scheduled", None),
        "strategy-enable": ("scheduled", None),
    }
    for name, (queue, schedules) in expected.items():
        d = deps[name]
        assert d["work_pool"] == {"name": "botai-process", "work_queue_name": queue}
        assert d.get("schedules") == schedules
        module, func = d["entrypoint"].split(":")
        assert module == f"flows/{name.replace('-', '_')}.py"
        mod = __import__(module.removesuffix(".py").replace("/", "."), fromlist=[func])
        assert getattr(mod, func).name == name
    s = load_settings()
    assert s.adaptive_retrain_deployment == "adaptive-retrain/adaptive-retrain"
    assert s.self_analysis_deployment == "llm-self-analysis/llm-self-analysis"
    assert s.emergency_disable_deployment == (
        "emergency-strategy-disable/emergency-strategy-disable"
    )
