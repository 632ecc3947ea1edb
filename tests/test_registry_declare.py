"""Declared plug-ins (``Registry.declare``): imported at their first lookup, answering exactly as if registered.

Why: the shipped schedulers and techniques are declared rather than imported up front so that one-shot commands
start fast (issue 19); a lookup, an alias, a typo or a listing must still behave as it did when every module was
imported eagerly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from capsim.errors import UnknownNameError
from capsim.registry import Registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A throw-away package with two plug-in modules that register into ``REG`` of its ``base`` module."""
    pkg = tmp_path / "declpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("from capsim.registry import Registry\nREG = Registry('widget')\n")
    (pkg / "alpha.py").write_text(
        "from declpkg.base import REG\n@REG.register('alpha', aliases=('first',))\nclass Alpha: ...\n"
    )
    (pkg / "pair.py").write_text(
        "from declpkg.base import REG\n"
        "@REG.register('beta')\nclass Beta: ...\n"
        "@REG.register('gamma', aliases=('third',))\nclass Gamma: ...\n"
    )
    (pkg / "silent.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m == "declpkg" or m.startswith("declpkg.")]:
        del sys.modules[name]


def _declared(reg: Registry) -> Registry:
    reg.declare("alpha", "declpkg.alpha")
    reg.declare("beta", "declpkg.pair")
    reg.declare("gamma", "declpkg.pair")
    return reg


def test_a_declared_module_is_imported_at_the_first_lookup_of_its_name(plugin_package):
    from declpkg.base import REG

    _declared(REG)
    assert REG.names() == ["alpha", "beta", "gamma"] and len(REG) == 3 and "beta" in REG
    assert "declpkg.alpha" not in sys.modules and "declpkg.pair" not in sys.modules  # naming imports nothing
    assert REG.get("beta").__name__ == "Beta"
    assert "declpkg.pair" in sys.modules and "declpkg.alpha" not in sys.modules  # only the module asked for
    assert REG.get("gamma").__name__ == "Gamma"  # registered by the same import
    assert REG.names() == ["alpha", "beta", "gamma"] and len(REG) == 3


def test_an_alias_or_a_miss_imports_every_declared_module_first(plugin_package):
    from declpkg.base import REG

    _declared(REG)
    assert REG.canonical("third") == "gamma"  # aliases are known only to the modules
    assert REG.get("first").__name__ == "Alpha"
    with pytest.raises(UnknownNameError) as err:
        REG.get("alpah")
    assert "'alpha'" in err.value.fix and "known widgets: alpha, beta, gamma" in err.value.fix
    assert REG.aliases_of("alpha") == ["first"]


def test_a_module_that_does_not_register_its_declared_name_is_a_plugin_bug(plugin_package):
    from declpkg.base import REG

    REG.declare("delta", "declpkg.silent")
    with pytest.raises(ValueError, match="declpkg.silent was declared to register widget 'delta' but did not"):
        REG.get("delta")


def test_declaring_two_modules_for_one_name_is_refused():
    reg: Registry[object] = Registry("widget")
    reg.declare("alpha", "somewhere.a")
    reg.declare("alpha", "somewhere.a")  # the same declaration twice is harmless
    with pytest.raises(ValueError, match="declared twice"):
        reg.declare("alpha", "somewhere.b")


def test_registering_with_the_decorator_still_works_beside_declarations():
    reg: Registry[type] = Registry("widget")
    reg.declare("alpha", "somewhere.that.is.never.imported")

    @reg.register("third-party", aliases=("tp",))
    class ThirdParty: ...

    assert reg.get("third-party") is ThirdParty and reg.names() == ["alpha", "third-party"]
    reg.add("alpha", int)  # a declared name registered by hand replaces the declaration
    assert reg.get("alpha") is int
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("alpha", str)


def test_the_shipped_declarations_match_what_the_modules_register():
    """Importing every scheduler and technique module registers exactly the declared names, with their aliases."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, json
        import simulator.schedulers as s, simulator.techniques as t
        out = {}
        for pkg, reg in ((s, s.SCHEDULERS), (t, t.TECHNIQUES)):
            declared = reg.names()
            aliases = {n: reg.aliases_of(n) for n in declared}  # imports every declared module
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
            out[reg.kind] = [declared, reg.names(), sorted(reg._declared), aliases]
        print(json.dumps(out))
        """
    )
    import json

    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    for kind, (declared, registered, left, aliases) in json.loads(res.stdout).items():
        assert declared == registered, kind  # no module registers a name that is not declared
        assert left == [], kind  # every declaration was registered by its module
        assert len(declared) >= 5 and any(aliases.values()), kind
