"""resnet_backbone.integrations.detectron2 where detectron2 cannot be imported: the module imports, and what needs
detectron2 says so. Runs with or without detectron2 installed (a new process blocks its import)."""
import json
import os
import subprocess
import sys

_CHILD = r'''
import json
import sys

sys.modules["detectron2"] = None  # `import detectron2` now raises ImportError, as where it is not installed

import resnet_backbone  # noqa: F401
import resnet_backbone.integrations  # noqa: F401
import resnet_backbone.integrations.detectron2 as rb_d2
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.backbone import build_backbone

report = {"HAVE_DETECTRON2": rb_d2.HAVE_DETECTRON2, "all": rb_d2.__all__}
cfg = get_cfg()
cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
cfg.MODEL.RESNETS.DEPTH = 18
cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
fpn = build_backbone(cfg)


def attempt(name, fn):
    try:
        fn()
    except Exception as e:
        report[name] = [type(e).__name__, str(e)]
    else:
        report[name] = None


def import_class():
    from resnet_backbone.integrations.detectron2 import Detectron2FPN  # noqa: F401


attempt("from_import_class", import_class)
attempt("attribute_class", lambda: rb_d2.Detectron2ResNet)
attempt("unknown_attribute", lambda: rb_d2.no_such_name)
attempt("register", rb_d2.register)
attempt("builder", lambda: rb_d2.build_rb_resnet_fpn_backbone(cfg))
attempt("as_detectron2_backbone", lambda: rb_d2.as_detectron2_backbone(fpn))
attempt("cfg_to_ours", lambda: rb_d2.detectron2_cfg_to_ours(get_cfg()))
attempt("star_import", lambda: exec("from resnet_backbone.integrations.detectron2 import *", {}))
report["detectron2_modules"] = sorted(m for m in sys.modules if m.startswith("detectron2.") and sys.modules[m])
print(json.dumps(report))
'''


def test_integration_imports_without_detectron2_and_names_it_when_used():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["HAVE_DETECTRON2"] is False
    assert "Detectron2FPN" not in report["all"] and "register" in report["all"]
    for name, what in (("from_import_class", "Detectron2FPN"), ("attribute_class", "Detectron2ResNet"),
                       ("register", "register"), ("builder", "build_rb_resnet_fpn_backbone"),
                       ("as_detectron2_backbone", "as_detectron2_backbone")):
        kind, message = report[name]
        assert kind == "ImportError", (name, report[name])
        assert f"resnet_backbone.integrations.detectron2.{what} needs detectron2" in message, message
        assert "docs/INTEGRATIONS.md" in message, message
    assert report["unknown_attribute"][0] == "AttributeError"
    assert report["cfg_to_ours"] is None and report["star_import"] is None
    assert report["detectron2_modules"] == []
