"""Property tests for the config loader: whatever a YAML file (or a graph of files joined by _BASE_) holds,
`merge_from_file` either merges it or raises ConfigError naming a file; nothing else escapes."""
import os
import shutil
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.config.config import CfgNode

pytestmark = pytest.mark.filterwarnings("ignore")


def _leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


DEFAULTS = dict(_leaves(get_cfg()))
REAL_KEYS = sorted(DEFAULTS)
SECTIONS = sorted({k.rsplit(".", 1)[0] for k in REAL_KEYS if "." in k})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["auto", "force", "BN", "res4", "p2", "cpu", "1e400",
                                                           "[1, 2", "{'a': 1}", "(1,)", "True", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
odd_keys = st.one_of(st.text(max_size=10), st.integers(-5, 5), st.none(), st.booleans(),
                     st.sampled_from(["_BASE_", "MODEL._BASE_", "COMPUTED_X", "MODEL.DEVICE", "__class__"]))


def _value_for(key):
    """Mostly a value of the default's type (so merges also succeed), sometimes anything."""
    d = DEFAULTS[key]
    typed = {bool: st.booleans(), int: st.integers(-3, 3000), float: st.floats(-10, 10), str: st.text(max_size=8),
             list: st.lists(st.integers(0, 600), max_size=4), tuple: st.lists(st.integers(0, 600), max_size=4)}
    return st.one_of(typed.get(type(d), values), values) if type(d) in typed else values


def _set(tree, dotted, value):
    *path, leaf = dotted.split(".")
    for p in path:
        if not isinstance(tree.get(p), dict):
            tree[p] = {}
        tree = tree[p]
    tree[leaf] = value


@st.composite
def trees(draw):
    tree = {}
    for key in draw(st.lists(st.sampled_from(REAL_KEYS), max_size=6, unique=True)):
        _set(tree, key, draw(_value_for(key)))
    for _ in range(draw(st.integers(0, 2))):  # unknown keys, at the top or inside a real section
        where = draw(st.sampled_from([None, *SECTIONS]))
        node = tree
        if where is not None:
            for p in where.split("."):
                node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[draw(odd_keys)] = draw(values)
    if draw(st.integers(0, 9)) == 0:  # a section given a scalar, a leaf given a mapping
        tree[draw(st.sampled_from(["MODEL", "SOLVER", "INPUT"]))] = draw(scalars)
    return tree


SNIPPETS = [
    "X: !!python/object/apply:os.getcwd []", "X: !!python/name:os.system", "X: !!python/tuple [1, 2]",
    "SEED: !custom 3", "OUTPUT_DIR: 2021-03-04", "OUTPUT_DIR: 2021-03-04T05:06:07Z", "MODEL:\n  WEIGHTS: !!binary aGk=",
    "DATASETS:\n  TRAIN: !!set {a, b}", "SEED: !!int abc", "SEED: !!float x", "SEED: !!timestamp nope",
    "SEED: !!map [1]", "? [a, b]\n: 1", "{[1]: 2}", "A: &a [1, 2]\nB: *a", "A: *nowhere", "L: &l [*l]",
    "M: &m {n: *m}", "\tSEED: 1", "SEED: [1", "SEED: 'open", "---\nSEED: 1\n---\nSEED: 2", "%YAML 1.1\n---\nSEED: 1",
    "SEED: 1\nSEED: 2", "\ufeffSEED: 1", "SEED: \x07", "- a\n- b", "just a scalar", "SEED: " + "[" * 400 + "]" * 400,
    "OUTPUT_DIR: '" + "-" * 3000 + "1'", "SEED: " + "9" * 5000, "SOLVER: {AMP: {ENABLED: sometimes}}", "null",
]


@st.composite
def yaml_texts(draw):
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=60)), False
    text = yaml.safe_dump(draw(trees()), allow_unicode=draw(st.booleans()), sort_keys=False)
    tagged = False
    if kind in (1, 2):  # a snippet appended or put in front of the dump
        snippet = draw(st.sampled_from(SNIPPETS))
        tagged = "!!python/" in snippet
        text = text + "\n" + snippet + "\n" if kind == 1 else snippet + "\n" + text
    elif kind == 3:  # cut anywhere
        text = text[:draw(st.integers(0, len(text)))]
    elif kind == 4:  # the whole tree as a list / scalar top level
        top = [draw(trees())] if draw(st.booleans()) else draw(scalars)
        text = yaml.safe_dump(top, sort_keys=False)
    return text, tagged


@pytest.fixture(scope="module")
def fuzz_dir():
    d = tempfile.mkdtemp(prefix="cfgfuzz")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _merge_or_config_error(path, names):
    cfg = get_cfg()
    try:
        cfg.merge_from_file(path)
    except ConfigError as e:
        msg = str(e)
        assert any(n in msg for n in names), msg
        event("ConfigError: " + (msg.split(": ", 2)[1] if msg.count(": ") > 1 else msg)[:24])
        return msg
    event("merged")
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(doc=yaml_texts(), as_bytes=st.booleans())
def test_any_yaml_file_merges_or_names_the_file(fuzz_dir, doc, as_bytes):
    text, tagged = doc
    path = os.path.join(fuzz_dir, "fuzz.yaml")
    if as_bytes:
        with open(path, "wb") as f:
            f.write(text.encode("utf-8", "surrogatepass") if text.isprintable() else text.encode("utf-16"))
    else:
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
    msg = _merge_or_config_error(path, [path])
    if tagged and "!!python/" in text.split("\n")[-2] and msg is None:
        pytest.fail("a file with a Python tag merged")


@st.composite
def base_graphs(draw):
    """n files, each with a _BASE_ of 0..2 others (indices >= n: files that do not exist), some in a sub folder;
    each may set SEED to its own index. Returns (names, bases, sets_seed)."""
    n = draw(st.integers(1, 5))
    names = [f"f{i}.yaml" if draw(st.booleans()) else f"sub/f{i}.yaml" for i in range(n + 2)]
    acyclic = draw(st.booleans())
    bases = []
    for i in range(n):
        pool = list(range(i + 1, n + 2)) if acyclic else list(range(n + 2))
        pool = pool or [n]
        bases.append(draw(st.lists(st.sampled_from(pool), max_size=2)))
    as_list = [draw(st.booleans()) for _ in range(n)]
    sets_seed = [draw(st.booleans()) for _ in range(n)]
    return names, bases, as_list, sets_seed


def _expected(n, bases, sets_seed):
    """What the loader must do, simulated: ("cycle", file) / ("missing", file) / ("ok", SEED)."""
    def load(i, chain):
        if i in chain:
            raise _Outcome("cycle", i)
        if i >= n:
            raise _Outcome("missing", i)
        seed = None
        for b in bases[i]:
            s = load(b, chain + [i])
            seed = s if s is not None else seed
        return i if sets_seed[i] else seed

    try:
        return "ok", load(0, [])
    except _Outcome as o:
        return o.kind, o.index


class _Outcome(Exception):
    def __init__(self, kind, index):
        self.kind, self.index = kind, index


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=base_graphs())
def test_any_base_graph_merges_or_names_the_cycle_or_missing_file(fuzz_dir, graph):
    names, bases, as_list, sets_seed = graph
    n = len(bases)
    root = os.path.join(fuzz_dir, "graph")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "sub"))
    paths = [os.path.join(root, name) for name in names]
    for i in range(n):
        rel = [os.path.relpath(paths[b], os.path.dirname(paths[i])) for b in bases[i]]
        doc = {}
        if rel:
            doc["_BASE_"] = rel if (as_list[i] or len(rel) > 1) else rel[0]
        if sets_seed[i]:
            doc["SEED"] = i
        with open(paths[i], "w") as f:
            f.write(yaml.safe_dump(doc) if doc else "")
    kind, what = _expected(n, bases, sets_seed)
    event(kind)
    cfg = get_cfg()
    if kind == "ok":
        cfg.merge_from_file(paths[0])
        assert cfg.SEED == (-1 if what is None else what)
        return
    with pytest.raises(ConfigError) as e:
        cfg.merge_from_file(paths[0])
    msg = str(e.value)
    if kind == "missing":
        assert f"not found (looked for {os.path.normpath(paths[what])})" in msg, msg
    else:
        assert "_BASE_ cycle" in msg and paths[what] in msg, msg
