"""DatasetError: one bad image or annotation, named by file, record and field.

Also the "bad sample" policy shared by the loaders: ``"error"`` (raise) or ``"skip"`` (drop the record and count
it). The policy is a process-wide setting so that dataset functions registered in the catalog (which take no
arguments) honour DATALOADER.ON_BAD_SAMPLE; use ``bad_sample_policy(...)`` as a context manager to change it.

Messages stay readable whatever the bad value: `DatasetError` prints at most `MAX_PART_CHARS` characters of the
file, the record and the field and `MAX_REASON_CHARS` of the reason (the head and the tail, with the full length
in between: ``'/data/ppp... (20971529 characters) ...ppp/img_1.jpg'``); its attributes keep the full values.
Loaders format the values they quote with `short_repr`, which never builds the whole repr of a huge value.
"""
from __future__ import annotations

import contextlib
import logging
import reprlib
import threading
from collections import Counter

__all__ = ["DatasetError", "BadSampleGuard", "bad_sample_policy", "get_bad_sample_policy", "count_bad_sample",
           "bad_sample_counts", "shorten", "short_repr", "MAX_PART_CHARS", "MAX_REASON_CHARS"]

_POLICIES = ("error", "skip")
_state = threading.local()
_counts: Counter = Counter()
_lock = threading.Lock()
logger = logging.getLogger(__name__)

MAX_PART_CHARS = 200  # of a file name, a record or a field in a message
MAX_REASON_CHARS = 1000  # of the reason (which quotes values)
_MAX_MESSAGE_CHARS = MAX_REASON_CHARS + 3 * MAX_PART_CHARS + 100  # a whole message given as one argument


def shorten(text, limit: int = MAX_PART_CHARS) -> str:
    """`str(text)`, or when longer than `limit` its first ~3/4 and last ~1/4 around "... (N characters) ...".

    The tail is kept because it is often what identifies the value (a file's base name)."""
    text = text if isinstance(text, str) else str(text)
    n = len(text)
    if n <= limit:
        return text
    head = max(1, limit * 3 // 4)
    tail = max(0, limit - head)
    return f"{text[:head]}... ({n} characters) ...{text[n - tail:] if tail else ''}"


class _BoundedRepr(reprlib.Repr):
    """reprlib with room for real values: containers show their first items, strings inside them 60 chars."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 8, 8, 6, 6
        self.maxstring, self.maxother, self.maxlong = 60, MAX_PART_CHARS, MAX_PART_CHARS

    def repr_str(self, x, level):
        if len(x) <= self.maxstring:
            return repr(x)
        return f"{x[:40]!r}... ({len(x)} characters) ...{x[len(x) - 10:]!r}"

    def repr_int(self, x, level):
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than int -> str allows
            return f"<int of about {int(x.bit_length() * 0.30103)} digits>"


_REPR = _BoundedRepr()


def short_repr(value, limit: int = MAX_PART_CHARS) -> str:
    """A repr of `value` of at most about `limit` characters, cheap even for a huge string, list or dict."""
    if isinstance(value, str) and len(value) > limit:
        budget = max(8, limit - 30)
        head = budget * 3 // 4
        return f"{value[:head]!r}... ({len(value)} characters) ...{value[len(value) - (budget - head):]!r}"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001  (a value whose repr fails is still named by its type)
        text = f"<{type(value).__name__}>"
    return shorten(text, limit)


class DatasetError(ValueError):
    """A dataset/annotation/image problem. The message names the file, the record (image id, annotation id,
    line number...) and the field, so the user can find and fix the exact entry.

    ``DatasetError("text")`` (one positional argument) also works, so the error survives being re-raised by
    DataLoader worker processes.

    The message shows at most `MAX_PART_CHARS` characters of the file, record and field and `MAX_REASON_CHARS`
    of the reason (see `shorten`); `.file`, `.record`, `.field` and `.reason` hold the full values.
    """

    def __init__(self, message: str, *, file=None, record=None, field=None):
        self.file = None if file is None else str(file)
        self.record = record
        self.field = field
        self.reason = message
        if file is None and record is None and field is None:
            full = shorten(message, _MAX_MESSAGE_CHARS)
        else:
            where = [f"file '{shorten(self.file)}'" if file is not None else "file <unknown>"]
            where.append(f"record {shorten(record)}" if record is not None else "record <none>")
            where.append(f"field '{shorten(field)}'" if field is not None else "field <none>")
            full = f"{', '.join(where)}: {shorten(message, MAX_REASON_CHARS)}"
        super().__init__(full)

    def __reduce__(self):
        return (_rebuild, (self.reason, self.file, self.record, self.field))


def _rebuild(reason, file, record, field):
    return DatasetError(reason, file=file, record=record, field=field)


def get_bad_sample_policy() -> str:
    return getattr(_state, "policy", "error")


def _check_policy(policy: str) -> str:
    if policy not in _POLICIES:
        raise ValueError(f"DATALOADER.ON_BAD_SAMPLE must be one of {_POLICIES}, got {policy!r}")
    return policy


@contextlib.contextmanager
def bad_sample_policy(policy: str):
    """Within the block, dataset loading and mapping use `policy` ("error" or "skip")."""
    _check_policy(policy)
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


class BadSampleGuard:
    """The bad-sample policy in one place: ``with guard: ...`` runs the block; a `DatasetError` raised in it
    propagates (policy "error") or is counted under `where` (`count_bad_sample`, which logs it) and swallowed
    (policy "skip"). After the block, `guard.failed` says whether it was skipped; `guard.skipped` counts all
    skips of this guard. `policy` None is the current one (`bad_sample_policy`).

        guard = BadSampleGuard(policy, "json")
        for rec in records:
            with guard:
                out.append(check(rec))
    """

    def __init__(self, policy: str | None = None, where: str = "data"):
        self.policy = _check_policy(get_bad_sample_policy() if policy is None else policy)
        self.where = where
        self.skipped = 0
        self.failed = False

    def __enter__(self):
        self.failed = False
        return self

    def __exit__(self, typ, err, tb) -> bool:
        if typ is None or not issubclass(typ, DatasetError) or self.policy != "skip":
            return False
        self.failed = True
        self.skipped += 1
        count_bad_sample(err, self.where)
        return True
