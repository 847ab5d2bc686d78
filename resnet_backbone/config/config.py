"""The config node: fvcore's CfgNode with errors that name the offending key.

`merge_from_file` follows `_BASE_` chains (paths relative to the file that names them). A key that the
defaults do not define, or a value of the wrong type, raises `ConfigError` naming the key, the file it
came from and, for a typo, the nearest valid key.
"""
from __future__ import annotations

import contextlib
import difflib
import re

from fvcore.common.config import CfgNode as _FvcoreCfgNode

__all__ = ["CfgNode", "ConfigError", "get_cfg", "WORD_OR_BOOL_KEYS"]

# Keys whose detectron2 meaning is a bool, to which we add words: the merge accepts either (fvcore would
# refuse a str where the default is a bool) and refuses any other word, naming the key.
WORD_OR_BOOL_KEYS = {"SOLVER.AMP.ENABLED": ("auto", "force")}


class ConfigError(ValueError):
    """A config file or override that does not fit the defaults."""


_MISSING_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")
_TYPE_MISMATCH = re.compile(r"for config key: (\S+)")


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
    def _words_or_bools(self, source: str, given: set):
        """Let WORD_OR_BOOL_KEYS take a bool or one of their words during a merge (the type check accepts
        anything over a None), then put back the old value where nothing was merged and check the new one.
        `given`: the keys the merge sets (a None given for one of them is refused like any other non-word)."""
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
                raise ConfigError(f"{source}: bad value for config key '{key}': expected True, False or one of "
                                  f"{', '.join(repr(w) for w in words)}, got {value!r}")

    def _explain(self, err: Exception, source: str) -> ConfigError:
        msg = str(err).strip("'\"")
        m = _MISSING_KEY.search(msg)
        if m:
            key = m.group(1)
            near = difflib.get_close_matches(key, list(_all_keys(self)), n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            return ConfigError(f"{source}: unknown config key '{key}'{hint}")
        m = _TYPE_MISMATCH.search(msg)
        key = m.group(1) if m else "?"
        return ConfigError(f"{source}: bad value for config key '{key}': {msg}")

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        try:
            super().merge_from_file(cfg_filename, allow_unsafe=allow_unsafe)
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {cfg_filename}") from e
        except (KeyError, ValueError, AssertionError) as e:
            if isinstance(e, ConfigError):
                raise
            raise self._explain(e, cfg_filename) from e

    def merge_from_list(self, cfg_list: list) -> CfgNode:
        try:
            with self._words_or_bools("command-line override", set(cfg_list[0::2])):
                return super().merge_from_list(cfg_list)
        except (KeyError, ValueError, AssertionError) as e:
            if isinstance(e, ConfigError):
                raise
            raise self._explain(e, "command-line override") from e

    def merge_from_other_cfg(self, cfg_other) -> CfgNode:
        try:
            with self._words_or_bools("config", set(_all_keys(cfg_other))):
                return super().merge_from_other_cfg(cfg_other)
        except (KeyError, ValueError, AssertionError) as e:
            if isinstance(e, ConfigError):
                raise
            raise self._explain(e, "config") from e


def get_cfg() -> CfgNode:
    """A fresh copy of every default (see `resnet_backbone/config/defaults.py`)."""
    from .defaults import _C

    return _C.clone()
