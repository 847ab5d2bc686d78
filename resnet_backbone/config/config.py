"""The config node: fvcore's CfgNode with errors that name the offending key.

`merge_from_file` follows `_BASE_` chains (paths relative to the file that names them). A key that the
defaults do not define, or a value of the wrong type, raises `ConfigError` naming the key, the file it
came from (the base that set it, where a base did) and, for a typo, the nearest valid key.

Files are read by our own loader, not fvcore's: always `yaml.safe_load` (a `!!python/...` tag is refused, never
run, whatever `allow_unsafe` says; detectron2 callers pass True), and every problem with a file is a
`ConfigError` naming it: not found (a `_BASE_` names the missing path as resolved and the file that refers to
it), a `_BASE_` cycle (the chain of files), a `_BASE_` that is not a file name, YAML syntax (line and column), a
top level that is not a mapping, a key that is not a name, a value no config can hold (a YAML date, bytes, a
set), a value that contains itself or expands past _MAX_VALUES through aliases, nesting past _MAX_DEPTH.
An empty file (yaml.safe_load gives None, as yacs reads it) merges as no change, with a warning.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import os
import re

import yaml
from fvcore.common.config import BASE_KEY
from fvcore.common.config import CfgNode as _FvcoreCfgNode

__all__ = ["CfgNode", "ConfigError", "get_cfg", "WORD_OR_BOOL_KEYS"]

# Keys whose detectron2 meaning is a bool, to which we add words: the merge accepts either (fvcore would
# refuse a str where the default is a bool) and refuses any other word, naming the key.
WORD_OR_BOOL_KEYS = {"SOLVER.AMP.ENABLED": ("auto", "force")}


class ConfigError(ValueError):
    """A config file or override that does not fit the defaults."""


logger = logging.getLogger(__name__)

_MAX_BASE_DEPTH = 32  # files in one _BASE_ chain; far beyond any real one, well before Python's recursion limit
_MAX_DEPTH = 32  # nested mappings / lists in one file (real configs: 4)
_MAX_VALUES = 50_000  # values after expanding YAML aliases (real configs: a few hundred)
_LEAF_TYPES = (str, int, float, bool, type(None))
_YAML_NAMES = {"date": "date", "datetime": "timestamp", "bytes": "binary (!!binary) value", "set": "set (!!set)"}
_NO_CONSTRUCTOR = re.compile(r"could not determine a constructor for the tag '([^']*)'")


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def _short(v, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def _described(v) -> str:
    return "None" if v is None else f"{type(v).__name__} {_short(v)}"


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_error(path: str, data: bytes, e: Exception) -> ConfigError:
    if isinstance(e, yaml.reader.ReaderError):
        line = data[:e.position].count(b"\n") + 1
        if e.encoding:
            return ConfigError(f"{path}: line {line}: not valid {e.encoding.upper()} text ({e.reason}); save the "
                               "file as UTF-8")
        return ConfigError(f"{path}: line {line}: character #x{e.character:04x} is not allowed in YAML")
    if isinstance(e, yaml.constructor.ConstructorError) and e.problem:
        m = _NO_CONSTRUCTOR.search(e.problem)
        if m:
            tag = m.group(1).replace("tag:yaml.org,2002:", "!!")
            where = _where(e.problem_mark) if e.problem_mark else "?"
            if tag.startswith("!!python/"):
                return ConfigError(f"{path}: {where}: YAML tag '{tag}' is not allowed: Python tags are never "
                                   "loaded (configs are read with yaml.safe_load); write the plain value instead")
            return ConfigError(f"{path}: {where}: unknown YAML tag '{tag}'; remove it (config values are plain "
                               "numbers, strings, lists and mappings)")
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        ctx = ""
        if e.context:
            ctx = f" ({e.context}" + (f" started at line {e.context_mark.line + 1}" if e.context_mark else "") + ")"
        return ConfigError(f"{path}: {_where(e.problem_mark)}: YAML syntax error: {e.problem}{ctx}")
    if isinstance(e, RecursionError):
        return ConfigError(f"{path}: nested too deeply for a config (more than {_MAX_DEPTH} levels)")
    text = " ".join(str(e).split())
    return ConfigError(f"{path}: not readable as YAML: {type(e).__name__}: {text}")


def _check_tree(path: str, tree: dict) -> None:
    """Refuse what yacs would choke on (TypeError, AssertionError, RecursionError, exponential copies): keys that
    are not names, values a config cannot hold, values that contain themselves, too deep, too many values."""
    sizes: dict[int, int] = {}  # id of a finished container -> its expanded size (aliases share containers)
    on_path: set[int] = set()

    def name(prefix: str, k) -> str:
        return f"{prefix}[{k}]" if isinstance(k, int) else (f"{prefix}.{k}" if prefix else k)

    def walk(v, key: str, depth: int) -> int:
        if isinstance(v, _LEAF_TYPES):
            return 1
        if not isinstance(v, (dict, list, tuple)):
            what = _YAML_NAMES.get(type(v).__name__, type(v).__name__)
            raise ConfigError(f"{path}: {key}: {_a(what)} ({_short(v)}) is not a config value; quote it to keep it "
                              "as text")
        if id(v) in sizes:
            return sizes[id(v)]
        if id(v) in on_path:
            raise ConfigError(f"{path}: {key}: contains itself (through a YAML alias); a config value must be a "
                              "plain tree")
        if depth > _MAX_DEPTH:
            raise ConfigError(f"{path}: {key}: nested more than {_MAX_DEPTH} levels deep")
        on_path.add(id(v))
        total = 1
        if isinstance(v, dict):
            for k, sub in v.items():
                if not isinstance(k, str):
                    under = f"under '{key}'" if key else "at the top level"
                    raise ConfigError(f"{path}: key {k!r} {under} is {_a(type(k).__name__)}, not a name; config "
                                      "keys are words like MODEL or DEPTH (quote it if it is meant as one)")
                total += walk(sub, name(key, k), depth + 1)
        else:
            for i, sub in enumerate(v):
                total += walk(sub, name(key, i), depth + 1)
        on_path.discard(id(v))
        if total > _MAX_VALUES:
            raise ConfigError(f"{path}: expands to more than {_MAX_VALUES} values (through YAML aliases?); a config "
                              "is a few hundred")
        sizes[id(v)] = total
        return total

    walk(tree, "", 0)


def _read_yaml(path: str) -> dict:
    """One file, safely: a dict of its keys ({} for an empty file), or a ConfigError naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{path}: is a directory, not a config file") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from e
    try:
        tree = yaml.safe_load(data)
    except Exception as e:  # any parse failure of a user's file is that file's error
        raise _yaml_error(path, data, e) from e
    if tree is None:
        logger.warning("config file %s is empty: nothing merged from it", path)
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys (like 'MODEL:'), got "
                          f"{_a(type(tree).__name__)} ({_short(tree)})")
    _check_tree(path, tree)
    return tree


def _merge_dicts(a: dict, b: dict) -> None:
    """Merge a into b (a wins); a mapping over a mapping merges key by key, anything else replaces."""
    for k, v in a.items():
        if isinstance(v, dict) and isinstance(b.get(k), dict):
            _merge_dicts(v, b[k])
        else:
            b[k] = copy.deepcopy(v)


def _base_paths(path: str, tree: dict) -> list[tuple[str, str]]:
    """(as written, as resolved) for each file `_BASE_` names, relative to `path`'s folder unless absolute."""
    value = tree[BASE_KEY]
    names = value if isinstance(value, list) else [value]
    out = []
    for i, name in enumerate(names):
        label = f"{BASE_KEY}[{i}]" if isinstance(value, list) else BASE_KEY
        if not isinstance(name, str):
            raise ConfigError(f"{path}: {label} must be a file name{' or a list of them' if label == BASE_KEY else ''}"
                              f", got {_described(name)}")
        if not name.strip():
            raise ConfigError(f"{path}: {label} is an empty file name; name the base config or remove the key")
        resolved = os.path.expanduser(name)
        if not os.path.isabs(resolved):
            resolved = os.path.join(os.path.dirname(path), resolved)
        out.append((name, os.path.normpath(resolved)))
    return out


def _load_with_bases(path: str, chain: tuple, loaded: list) -> dict:
    """`path` with its `_BASE_`s merged under it. `chain`: (shown path, real path) of the files that led here;
    `loaded`: gets (path, own keys) of every file read, in merge order (to name the one that set a key)."""
    real = os.path.realpath(path)
    if any(r == real for _, r in chain):
        start = next(i for i, (_, r) in enumerate(chain) if r == real)
        cycle = " -> ".join([p for p, _ in chain[start:]] + [path])
        raise ConfigError(f"{chain[-1][0]}: _BASE_ cycle: {cycle}; a config cannot inherit from itself")
    if len(chain) >= _MAX_BASE_DEPTH:
        raise ConfigError(f"{chain[-1][0]}: _BASE_ chain longer than {_MAX_BASE_DEPTH} files: "
                          + " -> ".join(p for p, _ in chain))
    tree = _read_yaml(path)
    if BASE_KEY not in tree:
        loaded.append((path, tree))
        return copy.deepcopy(tree)
    merged: dict = {}
    for name, resolved in _base_paths(path, tree):
        if not os.path.exists(resolved):
            raise ConfigError(f"{path}: _BASE_ '{name}' not found (looked for {resolved}); _BASE_ paths are "
                              "relative to the file that names them")
        if os.path.isdir(resolved):
            raise ConfigError(f"{path}: _BASE_ '{name}' is a directory ({resolved}), not a config file")
        _merge_dicts(_load_with_bases(resolved, (*chain, (path, real)), loaded), merged)
    own = {k: v for k, v in tree.items() if k != BASE_KEY}
    loaded.append((path, own))
    _merge_dicts(own, merged)
    return merged


def _has_key(tree: dict, key: str) -> bool:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _source(source, key: str) -> str:
    return source(key) if callable(source) else source


_MISSING_KEY = re.compile(r"Non-existent (?:config )?key: (.*)$")
_TYPE_MISMATCH = re.compile(r"for config key: (.+)$")


def _kind(v) -> str:
    if isinstance(v, dict):
        keys = ", ".join(list(map(str, v))[:3])
        return f"a section (keys like {keys})" if keys else "a section"
    return _described(v)


def _all_keys(node, prefix=""):
    for k, v in node.items():
        full = f"{prefix}{k}"
        yield full
        if isinstance(v, _FvcoreCfgNode):
            yield from _all_keys(v, full + ".")


def _node_and_leaf(node, key: str):
    *path, leaf = key.split(".")
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None, leaf
    return (node, leaf) if leaf in node else (None, leaf)


class CfgNode(_FvcoreCfgNode):
    """fvcore CfgNode whose merge errors name the key and suggest the nearest valid one."""

    @contextlib.contextmanager
    def _words_or_bools(self, source, given: set):
        """Let WORD_OR_BOOL_KEYS take a bool or one of their words during a merge (the type check accepts
        anything over a None), then put back the old value where nothing was merged and check the new one.
        `given`: the keys the merge sets (a None given for one of them is refused like any other non-word);
        `source`: what to name in an error, or a function of the key giving it."""
        saved = []
        for key in WORD_OR_BOOL_KEYS:
            node, leaf = _node_and_leaf(self, key)
            if node is not None:
                saved.append((key, node, leaf, node[leaf]))
                dict.__setitem__(node, leaf, None)
        try:
            yield
        finally:
            for key, node, leaf, old in saved:
                if node[leaf] is None and key not in given:
                    dict.__setitem__(node, leaf, old)
        for key, node, leaf, old in saved:
            value, words = node[leaf], WORD_OR_BOOL_KEYS[key]
            word = value.strip().lower() if isinstance(value, str) else None
            if word in words:
                dict.__setitem__(node, leaf, word)
            elif word in ("true", "false"):  # YAML reads these as bools; the command line leaves them words
                dict.__setitem__(node, leaf, word == "true")
            elif not isinstance(value, bool):
                dict.__setitem__(node, leaf, old)  # a refused value leaves the config as it was
                raise ConfigError(f"{_source(source, key)}: bad value for config key '{key}': expected True, False "
                                  f"or one of {', '.join(repr(w) for w in words)}, got {value!r}")

    @classmethod
    def _decode_cfg_value(cls, value):
        try:
            return super()._decode_cfg_value(value)
        except (RecursionError, MemoryError):  # ast.literal_eval overflows on e.g. "1+1+...": keep it a string
            return value

    @classmethod
    def _load_cfg_py_source(cls, filename):
        raise ConfigError(f"{filename}: a Python config file is not loaded (it would run code); use a YAML file")

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict:
        """fvcore's `load_yaml_with_base`, safe only: `allow_unsafe` is accepted (detectron2 passes True) and
        ignored. Returns the dict of `filename` with its `_BASE_`s merged under it; ConfigError naming the file."""
        return _load_with_bases(str(filename), (), [])

    def _explain(self, err: Exception, source, given=None) -> ConfigError:
        """`err` from a yacs merge as a ConfigError naming the key; `given`: the merged node, to show the value."""
        msg = str(err).strip("'\"")
        m = _MISSING_KEY.search(msg)
        if m:
            key = m.group(1)
            near = difflib.get_close_matches(key, list(_all_keys(self)), n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            return ConfigError(f"{_source(source, key)}: unknown config key '{key}'{hint}")
        m = _TYPE_MISMATCH.search(msg)
        if not m:
            return ConfigError(f"{_source(source, '')}: {msg}")
        key = m.group(1)
        node, leaf = _node_and_leaf(self, key)
        new_node, new_leaf = _node_and_leaf(given, key) if given is not None else (None, leaf)
        if node is None or new_node is None:
            return ConfigError(f"{_source(source, key)}: bad value for config key '{key}': {msg}")
        old, new = node[leaf], self._decode_cfg_value(new_node[new_leaf])
        hint = ""
        if isinstance(old, dict) and new is None:
            hint = f" (an empty '{leaf}:' is null in YAML: give keys under it or remove it)"
        like = "" if isinstance(old, dict) else f" (like the default {_short(old)})"
        return ConfigError(f"{_source(source, key)}: bad value for config key '{key}': expected "
                           f"{'a section' if isinstance(old, dict) else type(old).__name__}{like}, got {_kind(new)}"
                           + hint)

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML file and its `_BASE_`s (see the module docstring); `allow_unsafe` is ignored: configs are
        always read with yaml.safe_load."""
        path = str(cfg_filename)
        loaded: list[tuple[str, dict]] = []
        tree = _load_with_bases(path, (), loaded)

        def source(key: str) -> str:  # the last file that set `key`: the one to fix
            origin = next((p for p, own in reversed(loaded) if key and _has_key(own, key)), path)
            return path if origin == path else f"{origin} (a _BASE_ of {path})"

        try:
            other = type(self)(tree)
        except AssertionError as e:  # pragma: no cover - _check_tree refuses what yacs would assert on
            raise ConfigError(f"{path}: {e}") from e
        self._merge_other(other, source)

    def merge_from_list(self, cfg_list: list) -> CfgNode:
        try:
            with self._words_or_bools("command-line override", set(cfg_list[0::2])):
                return super().merge_from_list(cfg_list)
        except (KeyError, ValueError, AssertionError) as e:
            if isinstance(e, ConfigError):
                raise
            given: dict = {}
            for key, value in zip(cfg_list[0::2], cfg_list[1::2]):  # nested, for _explain to show the value
                *path, leaf = str(key).split(".")
                node = given
                for part in path:
                    node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
                node[leaf] = value
            raise self._explain(e, "command-line override", given) from e

    def merge_from_other_cfg(self, cfg_other) -> CfgNode:
        return self._merge_other(cfg_other, "config")

    def _merge_other(self, cfg_other, source) -> CfgNode:
        try:
            with self._words_or_bools(source, set(_all_keys(cfg_other))):
                return super().merge_from_other_cfg(cfg_other)
        except (KeyError, ValueError, AssertionError) as e:
            if isinstance(e, ConfigError):
                raise
            raise self._explain(e, source, cfg_other) from e


def get_cfg() -> CfgNode:
    """A fresh copy of every default (see `resnet_backbone/config/defaults.py`)."""
    from .defaults import _C

    return _C.clone()
