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


def test_per_module_optimizer_overrides_win_over_the_shared_settings() -> None:
    config = load_config(
        REPO / "configs/acdc/cross_teaching.yaml",
        ["optim.lr=0.02", "optim.overrides={transformer: {name: adamw, lr: 1.0e-4}}"],
    )
    transformer, cnn = config.optim.settings_for("transformer"), config.optim.settings_for("cnn")
    assert (transformer["name"], transformer["lr"]) == ("adamw", pytest.approx(1e-4))
    assert (cnn["name"], cnn["lr"]) == (config.optim.name, pytest.approx(0.02))
    assert transformer["weight_decay"] == cnn["weight_decay"] == config.optim.weight_decay
    assert "overrides" not in cnn


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


def test_acdc_and_la_configs_are_the_paper_protocols() -> None:
    """SSL4MIS ACDC (U-Net, 256x256, 12+12, 30k, SGD 0.01/0.9/1e-4 poly) and UA-MT LA (V-Net, 112x112x80, 15k)."""
    for method in ("supervised", "mean_teacher"):
        acdc = load_config(REPO / f"configs/acdc/{method}.yaml")
        assert (acdc.data.dataset, acdc.net.name, acdc.data.patch_size) == ("acdc", "unet", [256, 256])
        assert (acdc.data.batch_labeled, acdc.data.batch_unlabeled, acdc.train.iterations) == (12, 12, 30000)
        assert (acdc.optim.name, acdc.optim.lr, acdc.optim.momentum, acdc.optim.weight_decay) == (
            "sgd",
            0.01,
            0.9,
            1e-4,
        )
        assert (acdc.optim.schedule, acdc.optim.poly_power, acdc.train.val_every) == ("poly", 0.9, 200)
        la = load_config(REPO / f"configs/la/{method}.yaml")
        assert (la.data.dataset, la.net.name, la.data.patch_size) == ("la", "vnet", [112, 112, 80])
        assert (la.train.iterations, la.eval.stride, la.optim.lr) == (15000, [18, 18, 4], 0.01)
    mean_teacher = load_config(REPO / "configs/acdc/mean_teacher.yaml").method
    assert mean_teacher["ema_decay"] == 0.99 and mean_teacher["consistency"] == 0.1
    assert mean_teacher["rampup_epochs"] * mean_teacher["iterations_per_epoch"] == 30000
    assert mean_teacher["consistency_start"] == 1000
