"""The config node: fvcore's CfgNode with errors that name the offending key.

`merge_from_file` follows `_BASE_` chains (paths relative to the file that names them). A key that the
defaults do not define, or a value of the wrong type, raises `ConfigError` naming the key, the file it
came from and, for a typo, the nearest valid key.
"""
from __future__ import annotations

import difflib
import re

from fvcore.common.config import CfgNode as _FvcoreCfgNode

__all__ = ["CfgNode", "ConfigError", "get_cfg"]


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


class CfgNode(_FvcoreCfgNode):
    """fvcore CfgNode whose merge errors name the key and suggest the nearest valid one."""

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
            return super().merge_from_list(cfg_list)
        except (KeyError, ValueError, AssertionError) as e:
            if isinstance(e, ConfigError):
                raise
            raise self._explain(e, "command-line override") from e

    def merge_from_other_cfg(self, cfg_other) -> CfgNode:
        try:
            return super().merge_from_other_cfg(cfg_other)
        except (KeyError, ValueError, AssertionError) as e:
            if isinstance(e, ConfigError):
                raise
            raise self._explain(e, "config") from e


def get_cfg() -> CfgNode:
    """A fresh copy of every default (see `resnet_backbone/config/defaults.py`)."""
    from .defaults import _C

    return _C.clone()
