"""DatasetError: one bad image or annotation, named by file, record and field.

Also the "bad sample" policy shared by the loaders: ``"error"`` (raise) or ``"skip"`` (drop the record and count
it). The policy is a process-wide setting so that dataset functions registered in the catalog (which take no
arguments) honour DATALOADER.ON_BAD_SAMPLE; use ``bad_sample_policy(...)`` as a context manager to change it.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter

__all__ = ["DatasetError", "bad_sample_policy", "get_bad_sample_policy", "count_bad_sample", "bad_sample_counts"]

_POLICIES = ("error", "skip")
_state = threading.local()
_counts: Counter = Counter()
_lock = threading.Lock()
logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset/annotation/image problem. The message names the file, the record (image id, annotation id,
    line number...) and the field, so the user can find and fix the exact entry.

    ``DatasetError("text")`` (one positional argument) also works, so the error survives being re-raised by
    DataLoader worker processes.
    """

    def __init__(self, message: str, *, file=None, record=None, field=None):
        self.file = None if file is None else str(file)
        self.record = record
        self.field = field
        self.reason = message
        if file is None and record is None and field is None:
            full = message
        else:
            where = [f"file '{self.file}'" if file is not None else "file <unknown>"]
            where.append(f"record {record}" if record is not None else "record <none>")
            where.append(f"field '{field}'" if field is not None else "field <none>")
            full = f"{', '.join(where)}: {message}"
        super().__init__(full)

    def __reduce__(self):
        return (_rebuild, (self.reason, self.file, self.record, self.field))


def _rebuild(reason, file, record, field):
    return DatasetError(reason, file=file, record=record, field=field)


def get_bad_sample_policy() -> str:
    return getattr(_state, "policy", "error")


@contextlib.contextmanager
def bad_sample_policy(policy: str):
    """Within the block, dataset loading and mapping use `policy` ("error" or "skip")."""
    if policy not in _POLICIES:
        raise ValueError(f"DATALOADER.ON_BAD_SAMPLE must be one of {_POLICIES}, got {policy!r}")
    old = get_bad_sample_policy()
    _state.policy = policy
    try:
        yield
    finally:
        _state.policy = old


def count_bad_sample(err: DatasetError, where: str = "data") -> int:
    """Record one skipped sample (log it) and return how many were skipped so far under `where`."""
    with _lock:
        _counts[where] += 1
        n = _counts[where]
    logger.warning("skipping bad sample (%d skipped so far in %s): %s", n, where, err)
    return n


def bad_sample_counts() -> dict[str, int]:
    """How many bad samples this process skipped, by place ("json", "mapper", ...)."""
    with _lock:
        return dict(_counts)
