"""The config foundation: defaults, unknown keys with a suggestion, _BASE_ inheritance, types, our YAMLs."""
import glob
import os

import pytest

from resnet_backbone.config import ConfigError, get_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_defaults_have_detectron2_keys():
    cfg = get_cfg()
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone" and cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert cfg.INPUT.FORMAT == "BGR" and list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    assert get_cfg() is not cfg  # a fresh copy each time
    cfg.MODEL.RESNETS.DEPTH = 101
    assert get_cfg().MODEL.RESNETS.DEPTH == 50


def test_unknown_key_in_file_names_key_and_suggestion(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("MODEL:\n  RESNETS:\n    DEPHT: 101\n")
    with pytest.raises(ConfigError) as e:
        get_cfg().merge_from_file(str(f))
    assert "MODEL.RESNETS.DEPHT" in str(e.value) and "MODEL.RESNETS.DEPTH" in str(e.value)


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"MODEL\.RESNETS\.NROM.*MODEL\.RESNETS\.NORM"):
        get_cfg().merge_from_list(["MODEL.RESNETS.NROM", "BN"])


def test_base_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("MODEL:\n  RESNETS:\n    DEPTH: 101\n    NORM: BN\nINPUT:\n  FORMAT: RGB\n")
    sub = tmp_path / "sub" / "child.yaml"
    sub.parent.mkdir()
    sub.write_text('_BASE_: "../base.yaml"\nMODEL:\n  RESNETS:\n    NORM: GN\n')
    cfg = get_cfg()
    cfg.merge_from_file(str(sub))
    assert cfg.MODEL.RESNETS.DEPTH == 101  # from the base
    assert cfg.MODEL.RESNETS.NORM == "GN"  # child overrides
    assert cfg.INPUT.FORMAT == "RGB"


def test_wrong_type_is_an_error(tmp_path):
    """Our ConfigError, naming the file, the key, the expected type with the default and the value given; fvcore's
    own ValueError ("Type mismatch ... for config key: MODEL.RESNETS.DEPTH") names the key and the value too, so
    the test asks for what only our message says."""
    f = tmp_path / "typed.yaml"
    f.write_text("MODEL:\n  RESNETS:\n    DEPTH: fifty\n")
    with pytest.raises(ConfigError) as e:
        get_cfg().merge_from_file(str(f))
    assert type(e.value) is ConfigError
    assert str(e.value) == (f"{f}: bad value for config key 'MODEL.RESNETS.DEPTH': expected int (like the default "
                            "50), got str 'fifty'")
    with pytest.raises(ConfigError, match=r"^command-line override: bad value for config key "
                                          r"'MODEL.RESNETS.OUT_FEATURES': expected list \(like the default "):
        get_cfg().merge_from_list(["MODEL.RESNETS.OUT_FEATURES", "5"])


@pytest.mark.parametrize("typo, near", [("MODEL.RESNETS.DETPH", "MODEL.RESNETS.DEPTH"),
                                        ("SOLVER.BASE_RL", "SOLVER.BASE_LR"),
                                        ("INPUT.MIN_SIZE_TRIAN", "INPUT.MIN_SIZE_TRAIN")])
def test_typo_key_is_our_error_naming_the_key_and_the_nearest(tmp_path, typo, near):
    """fvcore raises a KeyError ("Non-existent config key") for these; ours names the key and the nearest valid one,
    from a file and from the command line."""
    *path, leaf = typo.split(".")
    text, indent = "", ""
    for part in path:
        text += f"{indent}{part}:\n"
        indent += "  "
    (tmp_path / "typo.yaml").write_text(f"{text}{indent}{leaf}: 1\n")
    for merge in (lambda c: c.merge_from_file(str(tmp_path / "typo.yaml")), lambda c: c.merge_from_list([typo, "1"])):
        with pytest.raises(ConfigError) as e:
            merge(get_cfg())
        assert type(e.value) is ConfigError
        assert str(e.value).endswith(f"unknown config key '{typo}'; did you mean '{near}'?")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)))
def test_every_config_file_loads(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.RESNETS.DEPTH in (18, 34, 50, 101, 152)


def test_imagenet_configs_build_the_classifier():
    from resnet_backbone.modeling.backbone import build_backbone

    for name, stride_in_1x1, fmt in [("R_50_torchvision", False, "RGB"), ("R_50_MSRA", True, "BGR")]:
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, "configs", "ImageNet", f"{name}.yaml"))
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is stride_in_1x1 and cfg.INPUT.FORMAT == fmt
        assert cfg.MODEL.RESNETS.NUM_CLASSES == 1000
        shapes = build_backbone(cfg).output_shape()
        assert shapes["res5"].stride == 32 and shapes["linear"].channels == 1000


@pytest.mark.parametrize("text, value", [("True", True), ("false", False), ("auto", "auto"), ("FORCE", "force")])
def test_amp_enabled_takes_a_bool_or_a_word(tmp_path, text, value):
    f = tmp_path / "amp.yaml"
    f.write_text(f"SOLVER:\n  AMP:\n    ENABLED: {text}\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(f))
    assert cfg.SOLVER.AMP.ENABLED == value and type(cfg.SOLVER.AMP.ENABLED) is type(value)
    again = get_cfg()
    again.merge_from_other_cfg(cfg.load_cfg(cfg.dump()))  # config.yaml written by a run reads back the same
    assert again.SOLVER.AMP.ENABLED == value
    cli = get_cfg()
    cli.merge_from_list(["SOLVER.AMP.ENABLED", text])
    assert cli.SOLVER.AMP.ENABLED == value
    other = get_cfg()
    other.merge_from_list(["SOLVER.BASE_LR", "0.5"])  # merging other keys leaves it at its default
    assert other.SOLVER.AMP.ENABLED is False


def test_amp_enabled_refuses_other_words_and_keeps_the_old_value(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.AMP.ENABLED", "auto"])
    with pytest.raises(ConfigError, match=r"command-line override: bad value for config key 'SOLVER.AMP.ENABLED': "
                                          r"expected True, False or one of 'auto', 'force', got 'sometimes'"):
        cfg.merge_from_list(["SOLVER.AMP.ENABLED", "sometimes"])
    assert cfg.SOLVER.AMP.ENABLED == "auto"
    for bad in ("3", "null"):  # null too: it would otherwise leave the old value, silently
        f = tmp_path / "bad.yaml"
        f.write_text(f"SOLVER:\n  AMP:\n    ENABLED: {bad}\n")
        with pytest.raises(ConfigError, match="SOLVER.AMP.ENABLED"):
            cfg.merge_from_file(str(f))
        assert cfg.SOLVER.AMP.ENABLED == "auto"
