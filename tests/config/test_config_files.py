"""Bad config files: each is a ConfigError naming the file (and the line, key or _BASE_ chain), never a
RecursionError, TypeError, AttributeError or raw yaml error, and never code run from the file."""
import logging
import os

import pytest

from resnet_backbone.config import ConfigError, get_cfg


def _merge(path):
    get_cfg().merge_from_file(str(path))


def _err(path) -> str:
    with pytest.raises(ConfigError) as e:
        _merge(path)
    return str(e.value)


# ---------------------------------------------------------------------------- _BASE_ chains


def test_base_cycle_of_two_files_names_the_chain(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text('_BASE_: "b.yaml"\nSEED: 1\n')
    b.write_text('_BASE_: "a.yaml"\nSEED: 2\n')
    msg = _err(a)
    assert "cycle" in msg and f"{a} -> {b} -> {a}" in msg
    assert len(msg.splitlines()) == 1


def test_base_on_itself_is_a_cycle(tmp_path):
    a = tmp_path / "self.yaml"
    a.write_text("_BASE_: ./self.yaml\n")
    msg = _err(a)
    assert "cycle" in msg and f"{a} -> {a}" in msg


def test_base_cycle_further_down_the_chain(tmp_path):
    (tmp_path / "top.yaml").write_text("_BASE_: sub/mid.yaml\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("_BASE_: ../low.yaml\n")
    (tmp_path / "low.yaml").write_text("_BASE_: [sub/mid.yaml]\n")
    msg = _err(tmp_path / "top.yaml")
    mid, low = tmp_path / "sub" / "mid.yaml", tmp_path / "low.yaml"
    assert f"{mid} -> {low} -> {mid}" in msg


def test_shared_base_is_not_a_cycle(tmp_path):
    """A diamond (two bases that share a base) is fine; only a file that reaches itself is a cycle."""
    (tmp_path / "root.yaml").write_text("MODEL:\n  RESNETS:\n    DEPTH: 101\n")
    (tmp_path / "left.yaml").write_text("_BASE_: root.yaml\nSEED: 3\n")
    (tmp_path / "right.yaml").write_text("_BASE_: root.yaml\nINPUT:\n  FORMAT: RGB\n")
    (tmp_path / "top.yaml").write_text("_BASE_: [left.yaml, right.yaml]\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "top.yaml"))
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.SEED, cfg.INPUT.FORMAT) == (101, 3, "RGB")


def test_missing_base_names_the_missing_path_and_the_referrer(tmp_path):
    child = tmp_path / "configs" / "child.yaml"
    child.parent.mkdir()
    child.write_text("_BASE_: ../Base-Missing.yaml\n")
    msg = _err(child)
    resolved = os.path.normpath(tmp_path / "Base-Missing.yaml")
    assert resolved in msg and str(child) in msg and "../Base-Missing.yaml" in msg
    assert "not found" in msg
    missing = tmp_path / "nope.yaml"  # the file given itself: as before
    assert _err(missing) == f"config file not found: {missing}"


def test_base_that_is_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    f = tmp_path / "c.yaml"
    f.write_text("_BASE_: d\n")
    msg = _err(f)
    assert msg.startswith(f"{f}: _BASE_ 'd' is a directory ({tmp_path / 'd'})")


@pytest.mark.parametrize("value, found", [("[1, 2]", "int 1"), ("3", "int 3"), ("", "None"), ("{a: b}", "dict"),
                                           ("''", "empty"), ("[a.yaml, null]", "None")])
def test_base_that_is_not_a_file_name(tmp_path, value, found):
    (tmp_path / "a.yaml").write_text("SEED: 1\n")
    f = tmp_path / "c.yaml"
    f.write_text(f"_BASE_: {value}\n")
    msg = _err(f)
    assert str(f) in msg and "_BASE_" in msg and found in msg


def test_error_in_a_base_names_the_base_that_set_the_key(tmp_path):
    (tmp_path / "base.yaml").write_text("MODEL:\n  RESNETS:\n    DEPHT: 101\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nSEED: 1\n")
    msg = _err(tmp_path / "child.yaml")
    assert msg.startswith(f"{tmp_path / 'base.yaml'} (a _BASE_ of {tmp_path / 'child.yaml'}): unknown config key "
                          "'MODEL.RESNETS.DEPHT'; did you mean 'MODEL.RESNETS.DEPTH'?")


@pytest.mark.parametrize("text, message", [
    ("MODEL:\n# RESNETS: {DEPTH: 101}\n", "bad value for config key 'MODEL': expected a section, got None (an empty "
                                          "'MODEL:' is null in YAML: give keys under it or remove it)"),
    ("MODEL:\n  RESNETS:\n    DEPTH: fifty\n", "bad value for config key 'MODEL.RESNETS.DEPTH': expected int (like "
                                              "the default 50), got str 'fifty'"),
    ("SOLVER:\n  BASE_LR: {x: 1}\n", "bad value for config key 'SOLVER.BASE_LR': expected float (like the default "
                                     "0.001), got a section (keys like x)"),
    ("'': 1\n", "unknown config key ''"),
])
def test_wrong_type_names_key_expected_and_given_only(tmp_path, text, message):
    """Not yacs' 'Type mismatch (...)' with the whole default section printed."""
    f = tmp_path / "t.yaml"
    f.write_text(text)
    assert _err(f) == f"{f}: {message}"


def test_wrong_type_on_the_command_line_names_key_expected_and_given():
    with pytest.raises(ConfigError) as e:
        get_cfg().merge_from_list(["SEED", "7", "MODEL.RESNETS.OUT_FEATURES", "res4"])
    assert str(e.value) == ("command-line override: bad value for config key 'MODEL.RESNETS.OUT_FEATURES': expected "
                            "list (like the default ['res4']), got str 'res4'")


def test_bad_word_for_amp_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "amp.yaml"
    f.write_text("SOLVER:\n  AMP:\n    ENABLED: sometimes\n")
    assert _err(f).startswith(f"{f}: bad value for config key 'SOLVER.AMP.ENABLED'")


# ---------------------------------------------------------------------------- what the YAML holds


@pytest.mark.parametrize("text", ["", "# nothing here\n", "---\n", "null\n"])
def test_empty_file_merges_as_no_change(tmp_path, text, caplog):
    """yaml.safe_load gives None for an empty file (and yacs reads None as no keys): nothing changes, with a warning
    naming the file (an empty file is more often a mistake than a wish)."""
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    cfg = get_cfg()
    logger = logging.getLogger("resnet_backbone.config.config")  # the package logger may not propagate
    logger.addHandler(caplog.handler)
    try:
        cfg.merge_from_file(str(f))
    finally:
        logger.removeHandler(caplog.handler)
    assert cfg == get_cfg()
    assert any(str(f) in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)


def test_empty_base_merges_as_no_change(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "c.yaml").write_text("_BASE_: empty.yaml\nSEED: 5\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "c.yaml"))
    assert cfg.SEED == 5


@pytest.mark.parametrize("text, found", [("- MODEL\n- SOLVER\n", "a list"), ("42\n", "an int"),
                                         ("just words\n", "a str"), ("3.5\n", "a float")])
def test_top_level_that_is_not_a_mapping(tmp_path, text, found):
    f = tmp_path / "flat.yaml"
    f.write_text(text)
    msg = _err(f)
    assert msg.startswith(f"{f}: ") and "top level" in msg and found in msg


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("MODEL:\n  RESNETS:\n    DEPTH: [50\n  FPN:\n    NORM: GN\n")
    msg = _err(f)
    assert msg.startswith(f"{f}: line 4, column 6: YAML syntax error: ")
    bad_tab = tmp_path / "tab.yaml"
    bad_tab.write_text("MODEL:\n\tDEVICE: cpu\n")
    assert _err(bad_tab).startswith(f"{bad_tab}: line 2, column 1: YAML syntax error: ")


def test_non_utf8_file(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("OUTPUT_DIR: caf\u00e9\n".encode("latin-1"))
    msg = _err(f)
    assert msg.startswith(f"{f}: ") and "UTF-8" in msg


def test_python_tag_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    f = tmp_path / "evil.yaml"
    f.write_text(f"SEED: 1\nOUTPUT_DIR: !!python/object/apply:os.system [\"touch {marker}\"]\n")
    msg = _err(f)
    assert msg.startswith(f"{f}: line 2") and "Python tags" in msg and "not allowed" in msg
    assert not marker.exists()
    with pytest.raises(ConfigError, match="Python tags"):  # detectron2 callers pass allow_unsafe=True: still refused
        get_cfg().merge_from_file(str(f), allow_unsafe=True)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="Python tags"):
        get_cfg().load_yaml_with_base(str(f), allow_unsafe=True)
    assert not marker.exists()


def test_python_tag_in_a_base_is_refused(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.yaml").write_text(f"SEED: !!python/object/apply:os.system [\"touch {marker}\"]\n")
    (tmp_path / "c.yaml").write_text("_BASE_: evil.yaml\n")
    msg = _err(tmp_path / "c.yaml")
    assert msg.startswith(f"{tmp_path / 'evil.yaml'}: line 1") and "Python tags" in msg
    assert not marker.exists()


def test_python_config_source_is_refused(tmp_path):
    marker = tmp_path / "ran"
    f = tmp_path / "cfg.py"
    f.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ncfg = None\n")
    with open(f) as fh, pytest.raises(ConfigError, match="cfg.py"):
        get_cfg().load_cfg(fh)
    assert not marker.exists()


def test_unknown_tag_names_file_and_line(tmp_path):
    f = tmp_path / "tag.yaml"
    f.write_text("SEED: 1\nMODEL:\n  DEVICE: !gpu 0\n")
    msg = _err(f)
    assert msg.startswith(f"{f}: line 3") and "'!gpu'" in msg


@pytest.mark.parametrize("text, key, what", [
    ("1: 2\n", "1", "int"),
    ("MODEL:\n  null: 3\n", "None", "NoneType"),
    ("MODEL:\n  RESNETS:\n    true: 1\n", "True", "bool"),
])
def test_key_that_is_not_a_name(tmp_path, text, key, what):
    f = tmp_path / "k.yaml"
    f.write_text(text)
    msg = _err(f)
    assert msg.startswith(f"{f}: ") and f"key {key}" in msg and what in msg


@pytest.mark.parametrize("text, key, what", [
    ("OUTPUT_DIR: 2024-01-31\n", "OUTPUT_DIR", "date"),
    ("MODEL:\n  WEIGHTS: !!binary aGk=\n", "MODEL.WEIGHTS", "binary"),
    ("DATASETS:\n  TRAIN: !!set {a, b}\n", "DATASETS.TRAIN", "set"),
    ("SOLVER:\n  STEPS: [1, 2020-01-01]\n", "SOLVER.STEPS[1]", "date"),
])
def test_value_yaml_makes_that_a_config_cannot_hold(tmp_path, text, key, what):
    f = tmp_path / "v.yaml"
    f.write_text(text)
    msg = _err(f)
    assert msg.startswith(f"{f}: {key}: ") and what in msg


@pytest.mark.parametrize("text", ["DATASETS:\n  TRAIN: &x [*x]\n", "MODEL: &m\n  RESNETS: *m\n"])
def test_value_that_contains_itself(tmp_path, text):
    f = tmp_path / "loop.yaml"
    f.write_text(text)
    msg = _err(f)
    assert msg.startswith(f"{f}: ") and "itself" in msg


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 {x: 1, y: 2}"] + [f"a{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(9))}}}"
                                         for i in range(1, 6)]
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(lines) + "\n")
    msg = _err(f)
    assert msg.startswith(f"{f}: ") and "values" in msg


def test_nesting_too_deep(tmp_path):
    f = tmp_path / "deep.yaml"
    f.write_text("SOLVER:\n  STEPS: " + "[" * 600 + "]" * 600 + "\n")
    assert _err(f).startswith(f"{f}: ")
    f.write_text("MODEL:\n" + "".join("  " * (i + 1) + f"K{i}:\n" for i in range(60)) + "  " * 61 + "V: 1\n")
    assert _err(f).startswith(f"{f}: ")


@pytest.mark.parametrize("text", ["-" * 100000 + "1", "1+" * 50000 + "1"])
def test_string_that_python_cannot_parse_stays_a_string(tmp_path, text):
    """yacs reads string values with ast.literal_eval, which overflows on these: they stay strings."""
    f = tmp_path / "s.yaml"
    f.write_text(f"OUTPUT_DIR: '{text}'\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(f))
    assert cfg.OUTPUT_DIR == text
    cli = get_cfg()
    cli.merge_from_list(["OUTPUT_DIR", text])
    assert cli.OUTPUT_DIR == text
