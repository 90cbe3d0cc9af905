"""The package's surface: every public name is documented and declared in the stubs, and the
stubs' signatures are the module's."""

import inspect
import pathlib
import re

import qlift

STUBS = pathlib.Path(qlift.__file__).with_name("__init__.pyi")


def test_every_public_name_has_a_docstring_and_a_stub():
    stubs = STUBS.read_text()
    for name in qlift.__all__:
        if name == "__version__":
            assert re.fullmatch(r"\d+\.\d+\.\d+", qlift.__version__)
            continue
        obj = getattr(qlift, name)
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
        assert re.search(rf"^(def|class) {name}\b", stubs, re.M), f"{name} is not in {STUBS.name}"
    for method in ["run", "__call__", "ir", "bench"]:
        assert getattr(qlift.Model, method).__doc__, method


def split_top_level(text):
    """Splits a parameter list on the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[(" and 1 or ch in "])" and -1 or 0
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def test_stub_signatures_match_the_module():
    stubs = STUBS.read_text()
    for name in ["compile", "quantize", "report", "dump"]:
        params = list(inspect.signature(getattr(qlift, name)).parameters.values())
        stub = re.search(rf"^def {name}\((.*?)\) ->", stubs, re.M | re.S).group(1)
        stub_names = [p.split(":")[0].strip() for p in split_top_level(stub) if p.strip() and p.strip() != "*"]
        assert stub_names == [p.name for p in params], name
        for p in params:
            if p.default is not inspect.Parameter.empty:
                assert re.search(rf"\b{p.name}: [^=]*= {re.escape(repr(p.default).replace(chr(39), chr(34)))}", stub), (name, p.name)
