"""The chart's ``cost`` values reach the operator: rendered into TUNEFORGE_GPU_HOUR_PRICES and
TUNEFORGE_COST_CURRENCY, parsed by the operator's Settings as given; a bad price is refused by the
schema, naming the key."""

from __future__ import annotations

from pathlib import Path

from test_chart_render import by_kind, helm, render, run_helm  # noqa: F401 - helm is a fixture
from tuneforge.settings import Settings


def _env(docs: list[dict[str, object]]) -> dict[str, str]:
    dep = by_kind(docs, "Deployment")[0]
    container = dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_prices_reach_the_operator_settings(helm: str, tmp_path: Path) -> None:  # noqa: F811
    env = _env(render(helm, {"cost": {"currency": "EUR", "gpuHourPrices": {"nvidia.com/gpu": 2.5, "amd.com/gpu": 2}}}, tmp_path))
    settings = Settings.from_env(env)
    assert settings.cost_currency == "EUR"
    assert settings.gpu_hour_price_map() == {"nvidia.com/gpu": 2.5, "amd.com/gpu": 2.0}
    default = Settings.from_env(_env(render(helm)))
    assert (default.gpu_hour_price_map(), default.cost_currency) == ({}, "USD")


def test_a_bad_price_is_refused_naming_it(helm: str, tmp_path: Path) -> None:  # noqa: F811
    for value, fragment in ((-1, "/cost/gpuHourPrices/nvidia.com~1gpu"), ("2.5", "/cost/gpuHourPrices/nvidia.com~1gpu")):
        f = tmp_path / "v.yaml"
        f.write_text(f"cost: {{gpuHourPrices: {{nvidia.com/gpu: {value!r}}}}}\n".replace("'", '"'))
        res = run_helm(helm, "template", "x", "-f", str(f))
        assert res.returncode != 0 and fragment in res.stderr, res.stderr
