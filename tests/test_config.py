"""Config loading: YAML defaults, dotted overrides win, unknown keys and wrong types are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsemi.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_overrides_win_and_are_parsed_as_yaml() -> None:
    config = load_config(
        REPO / "configs/acdc/mean_teacher.yaml",
        ["data.labeled=7", "data.patch_size=[128, 128]", "method.ema_decay=0.999", "optim.lr=1e-3"],
    )
    assert config.data.labeled == 7
    assert config.data.patch_size == [128, 128]
    assert config.method_options["ema_decay"] == 0.999
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.data.batch_labeled == 12


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.labelled=3", "data.labelled"),
        ("train.iterations=many", "train.iterations"),
        ("trainn.iterations=3", "trainn"),
        ("novalue", "key=value"),
    ],
)
def test_bad_keys_and_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/acdc/supervised.yaml", [override])


def test_unreadable_config_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_every_shipped_config_loads() -> None:
    from medsemi.methods.base import build_options, method_class

    for path in sorted((REPO / "configs").rglob("*.yaml")):
        config = load_config(path)
        build_options(method_class(config.method_name), config.method_options)
