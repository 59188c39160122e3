"""mode="python": capture a model's own code (intern/extern/mock) and rebuild it without pickle."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import linecache
import math
import shutil
import sys
import textwrap
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from torchferry.archive._capture_format import glob_matches
from torchferry.archive.capture import CapturedCode, capture_python
from torchferry.errors import ArchiveError, PackagingError
from torchferry.runtime.python_program import build_python_model

pytestmark = pytest.mark.unit

CONFIG = """
    import enum

    HIDDEN = 8


    class Act(enum.Enum):
        RELU = "relu"
        TANH = "tanh"
"""

NET = """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from .config import HIDDEN, Act

    try:
        import torchferry_surely_absent_module  # optional speed-up: the code copes without it
    except ImportError:
        torchferry_surely_absent_module = None


    def swish(x):
        return x * torch.sigmoid(x)


    class Block(torch.nn.Module):
        def __init__(self, width, act):
            super().__init__()
            self.lin = torch.nn.Linear(width, width)
            self.act = act

        def forward(self, x):
            from . import helpers  # imported only here: never loaded while packing

            return helpers.residual(x, self.act(self.lin(x)))


    class Net(torch.nn.Module):
        def __init__(self, factor=2.0):
            super().__init__()
            self.factor = factor
            self.scale = float(np.sqrt(2.0))
            self.kind = Act.TANH
            self.body = torch.nn.Sequential(torch.nn.Linear(4, HIDDEN), Block(HIDDEN, F.relu), Block(HIDDEN, swish))
            self.head = torch.nn.Linear(HIDDEN, 3)
            self.register_buffer("offset", torch.linspace(0, 1, 3), persistent=False)
            self.register_buffer("calls", torch.zeros(1))
            self.bias_hint = torch.full((3,), 0.5)

        def forward(self, x):
            act = torch.tanh if self.kind is Act.TANH else torch.relu
            return act(self.head(self.body(x))) * self.factor * self.scale + self.offset + self.bias_hint
"""

HELPERS = """
    def residual(x, y):
        return x + y
"""


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    importlib.invalidate_caches()
    return root


@pytest.fixture(autouse=True)
def forget_imported_modules(tmp_path: Path) -> Iterator[None]:
    """Every test writes its own ``models`` package: drop it (and the archives' copies) afterwards.
    Modules of torch or numpy imported meanwhile stay: importing them twice is not supported."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        file = str(getattr(sys.modules[name], "__file__", None))
        if file.startswith((str(tmp_path), "<ferry:")) or name.startswith("_torchferry_code_"):
            del sys.modules[name]


@pytest.fixture
def models_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = write_package(
        tmp_path / "src",
        {"models/__init__.py": "", "models/config.py": CONFIG, "models/net.py": NET, "models/helpers.py": HELPERS},
    )
    monkeypatch.syspath_prepend(str(root))
    return root


def rebuild(captured: CapturedCode, model: torch.nn.Module) -> torch.nn.Module:
    state = dict(model.state_dict())
    return build_python_model(captured.program, captured.files.__getitem__, state, captured.tensors)


def new_net(**kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    model: torch.nn.Module = importlib.import_module("models.net").Net(**kwargs)
    return model.eval()


def test_multi_module_package_round_trips(models_pkg: Path) -> None:
    model = new_net()
    captured = capture_python(model)

    assert set(captured.program["interned"]) == {"models", "models.config", "models.net", "models.helpers"}
    assert captured.program["packages"] == ["models"]
    assert "program/code/models/net.py" in captured.files and "program/code/models/__init__.py" in captured.files
    assert captured.program["externed"] == ["numpy"]
    assert captured.program["absent"] == ["torchferry_surely_absent_module"]
    assert captured.requirements["numpy"] == importlib.metadata.version("numpy")
    assert "torch" in captured.requirements
    assert captured.files["program/code/models/net.py"] == (models_pkg / "models/net.py").read_bytes()
    assert all(name.startswith("program/") for name in captured.files)
    json.dumps(captured.program)  # the manifest needs plain JSON

    rebuilt = rebuild(captured, model)
    x = torch.randn(5, 4)
    torch.testing.assert_close(rebuilt(x), model(x))
    assert type(rebuilt) is not type(model)  # the archive's own copy of the code
    assert type(rebuilt).__module__.startswith("_torchferry_code_")
    assert type(rebuilt).__module__.endswith(".models.net")
    assert not rebuilt.training and not any(m.training for m in rebuilt.modules())


def test_a_model_loaded_from_an_archive_packs_again_without_its_source(models_pkg: Path) -> None:
    model = new_net()
    x = torch.randn(2, 4)
    expected = model(x)
    first = capture_python(model)
    loaded = rebuild(first, model)
    shutil.rmtree(models_pkg / "models")  # as on the machine that loaded the archive
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]

    again = capture_python(loaded)
    assert again.program["interned"] == first.program["interned"]  # models.helpers: never imported, still found
    assert again.files == first.files  # original module names, not the mangled ones
    torch.testing.assert_close(rebuild(again, loaded)(x), expected)


def test_weights_are_assigned_not_copied(models_pkg: Path) -> None:
    model = new_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    captured = capture_python(model)
    rebuilt = build_python_model(captured.program, captured.files.__getitem__, state, captured.tensors)
    assert rebuilt.head.weight.data_ptr() == state["head.weight"].data_ptr()
    assert rebuilt.calls.data_ptr() == state["calls"].data_ptr()
    assert isinstance(rebuilt.head.weight, torch.nn.Parameter) and rebuilt.head.weight.requires_grad


def test_non_persistent_buffer_and_tensor_attribute_restored(models_pkg: Path) -> None:
    model = new_net()
    captured = capture_python(model)
    assert "offset" not in model.state_dict()
    assert set(captured.tensors) == {"buffer:offset", "attr:bias_hint"}
    rebuilt = rebuild(captured, model)
    torch.testing.assert_close(rebuilt.offset, model.offset)
    torch.testing.assert_close(rebuilt.bias_hint, model.bias_hint)
    assert rebuilt._non_persistent_buffers_set == {"offset"}
    assert set(rebuilt.state_dict()) == set(model.state_dict())


TIED = """
    import torch


    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)
            self.head = torch.nn.Linear(6, 10, bias=False)
            self.head.weight = self.emb.weight
            self.norm = torch.nn.LayerNorm(6)
            self.blocks = torch.nn.ModuleList([self.norm, torch.nn.Linear(6, 6), self.norm])

        def forward(self, ids):
            h = self.emb(ids)
            for block in self.blocks:
                h = block(h)
            return self.head(h)
"""


@pytest.mark.parametrize("drop", [None, "head.weight", "emb.weight"])
def test_tied_weights_and_shared_modules_come_back_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: str | None
) -> None:
    monkeypatch.syspath_prepend(str(write_package(tmp_path, {"lm.py": TIED})))
    torch.manual_seed(0)
    model = importlib.import_module("lm").LM().eval()
    captured = capture_python(model)
    state = dict(model.state_dict())
    if drop:  # a writer that keeps tied tensors once may keep either name
        del state[drop]
    rebuilt = build_python_model(captured.program, captured.files.__getitem__, state, captured.tensors)
    assert rebuilt.head.weight is rebuilt.emb.weight
    assert rebuilt.blocks[0] is rebuilt.blocks[2] is rebuilt.norm
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(rebuilt(ids), model(ids))


def test_two_archives_with_different_models_code_load_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured, models = [], []
    for factor in (2, 3):
        root = write_package(
            tmp_path / f"v{factor}",
            {
                "models/__init__.py": "from .net import Net\n",
                "models/net.py": """
                    import torch
                    from . import util

                    class Net(torch.nn.Module):
                        def __init__(self):
                            super().__init__()
                            self.lin = torch.nn.Linear(2, 2)

                        def forward(self, x):
                            return util.scale(self.lin(x))
                """,
                "models/util.py": f"def scale(x):\n    return x * {factor}\n",
            },
        )
        with monkeypatch.context() as patch:
            patch.syspath_prepend(str(root))
            torch.manual_seed(0)
            model = importlib.import_module("models").Net().eval()
            captured.append(capture_python(model))
            models.append(model)
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]

    first, second = (rebuild(c, m) for c, m in zip(captured, models))
    x = torch.ones(1, 2)
    base = models[0].lin(x)
    torch.testing.assert_close(first(x), base * 2)
    torch.testing.assert_close(second(x), base * 3)
    assert type(first).__module__ != type(second).__module__
    assert "models" not in sys.modules  # neither archive leaked its code under the plain name


UTILS_MISSING = """
    import numpy_missing_mod
    from other_missing.sub import thing
"""


def test_unresolved_modules_are_all_listed_at_once_with_fixes(models_pkg: Path) -> None:
    write_package(models_pkg, {"models/utils.py": UTILS_MISSING})
    net = (models_pkg / "models/net.py").read_text()
    net = net.replace("import numpy as np", "import numpy as np\nfrom . import utils")
    (models_pkg / "models/net.py").write_text(net)
    importlib.invalidate_caches()
    sys.modules["numpy_missing_mod"] = type(sys)("numpy_missing_mod")  # importable while the model is built...
    sys.modules["other_missing"] = type(sys)("other_missing")
    sys.modules["other_missing.sub"] = type(sys)("other_missing.sub")
    sys.modules["other_missing.sub"].thing = 1  # type: ignore[attr-defined]
    model = new_net()
    for name in ("numpy_missing_mod", "other_missing", "other_missing.sub"):
        del sys.modules[name]  # ...but not installed, as on a machine missing them

    with pytest.raises(PackagingError) as info:
        capture_python(model)
    message = str(info.value)
    assert info.value.unresolved == ["numpy_missing_mod", "other_missing"]
    assert (
        'numpy_missing_mod: imported by models.utils but not installed — pass mock=["numpy_missing_mod"] (stub it) '
        "or install it" in message
    )
    assert 'other_missing: imported by models.utils but not installed — pass mock=["other_missing"]' in message
    assert "other_missing.sub" not in message  # the package is the problem, not each submodule

    fixed = capture_python(model, mock=["numpy_missing_mod", "other_missing"])
    assert fixed.program["mocked"] == ["numpy_missing_mod", "other_missing", "other_missing.sub"]


def test_class_defined_in_main_gets_advice() -> None:
    def forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x

    net_class = type("Net", (torch.nn.Module,), {"__module__": "__main__", "forward": forward})
    with pytest.raises(PackagingError) as info:
        capture_python(net_class())
    assert info.value.unresolved == ["__main__"]
    assert (
        "__main__: class Net is defined in __main__ (the running script or notebook); move it into a module file "
        "and import it, or use mode='export'" in str(info.value)
    )


HEAVY_USER = """
    import torch
    import heavy_missing
    from heavy_missing.plots import Figure


    class Base(heavy_missing.Widget):
        pass


    def draw(x: heavy_missing.Array | None = None) -> "heavy_missing.Array":
        return Figure(x)


    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x)

        def debug(self):
            return draw()
"""


def test_mocked_module_is_a_stub_that_fails_only_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(write_package(tmp_path, {"heavy_user.py": HEAVY_USER})))
    fake = type(sys)("heavy_missing")
    fake.Widget, fake.Array, fake.__path__ = object, object, []  # type: ignore[attr-defined]
    plots = type(sys)("heavy_missing.plots")
    plots.Figure = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "heavy_missing", fake)
    monkeypatch.setitem(sys.modules, "heavy_missing.plots", plots)
    model = importlib.import_module("heavy_user").Net().eval()
    monkeypatch.delitem(sys.modules, "heavy_missing")
    monkeypatch.delitem(sys.modules, "heavy_missing.plots")

    captured = capture_python(model, mock=["heavy_missing"])
    assert captured.program["mocked"] == ["heavy_missing", "heavy_missing.plots"]
    assert "heavy_missing" not in captured.requirements
    rebuilt = rebuild(captured, model)  # importing the stub and taking attributes works
    x = torch.randn(3, 2)
    torch.testing.assert_close(rebuilt(x), model(x))
    with pytest.raises(NotImplementedError, match=r"heavy_missing\.plots\.Figure cannot be used: module 'heavy_"):
        rebuilt.debug()
    code = sys.modules[type(rebuilt).__module__]
    with pytest.raises(NotImplementedError, match="was mocked when this model was packed"):
        code.Base()  # type: ignore[attr-defined]
    with pytest.raises(NotImplementedError):
        bool(code.heavy_missing.anything)  # type: ignore[attr-defined]


def test_glob_patterns() -> None:
    assert glob_matches("models.**", "models")
    assert glob_matches("models.**", "models.a.b")
    assert glob_matches("models.*", "models.a")
    assert not glob_matches("models.*", "models")
    assert not glob_matches("models.*", "models.a.b")
    assert glob_matches("**.net", "models.nets.net")
    assert glob_matches("mod*.n?t", "models.n?t")
    assert not glob_matches("mod*.net", "models.nets")
    assert glob_matches("**", "anything.at.all")


def test_pattern_precedence_is_mock_then_extern_then_intern(models_pkg: Path) -> None:
    model = new_net()
    captured = capture_python(model, intern=["models.**"], extern=["models.helpers", "numpy"], mock=["numpy.**"])
    program = captured.program
    assert "models.helpers" in program["externed"]
    assert "models.helpers" not in program["interned"]
    assert program["mocked"] == ["numpy"]
    assert "numpy" not in captured.requirements
    assert set(program["interned"]) == {"models", "models.config", "models.net"}


def test_intern_pattern_picks_up_modules_imported_by_computed_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_package(
        tmp_path,
        {
            "plug/__init__.py": "",
            "plug/registry.py": """
                import importlib
                import torch

                class Net(torch.nn.Module):
                    def __init__(self, kind):
                        super().__init__()
                        self.kind = kind
                        importlib.import_module("plug.kinds." + kind)

                    def forward(self, x):
                        return importlib.import_module("plug.kinds." + self.kind).apply(x)
            """,
            "plug/kinds/__init__.py": "",
            "plug/kinds/double.py": "def apply(x):\n    return 2 * x\n",
        },
    )
    monkeypatch.syspath_prepend(str(root))
    model = importlib.import_module("plug.registry").Net("double")
    assert "plug.kinds.double" not in capture_python(model).program["interned"]
    captured = capture_python(model, intern=["plug.**"])
    assert "plug.kinds.double" in captured.program["interned"]
    rebuilt = rebuild(captured, model)
    torch.testing.assert_close(rebuilt(torch.ones(2)), torch.full((2,), 2.0))
    assert type(rebuilt).__module__.startswith("_torchferry_code_")


def test_site_packages_module_without_distribution_is_unresolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = write_package(tmp_path / "site-packages", {"orphan_lib.py": "K = 2\n"})
    user = write_package(
        tmp_path / "src",
        {"uses_orphan.py": "import torch\nimport orphan_lib\n\nclass Net(torch.nn.Identity):\n    pass\n"},
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(user))
    model = importlib.import_module("uses_orphan").Net()
    with pytest.raises(PackagingError) as info:
        capture_python(model)
    assert info.value.unresolved == ["orphan_lib"]
    assert "orphan_lib: imported by uses_orphan; it lives in site-packages but no installed distribution" in str(
        info.value
    )
    assert 'extern=["orphan_lib"]' in str(info.value)
    fixed = capture_python(model, intern=["orphan_lib"])
    assert fixed.program["interned"] == ["orphan_lib", "uses_orphan"]
    assert fixed.files["program/code/orphan_lib.py"] == b"K = 2\n"


ODD = """
    import functools
    import math
    from collections import OrderedDict

    import numpy as np
    import torch


    def shifted(x, by):
        return x + by


    class Holder(torch.nn.Module):
        def __init__(self, **attrs):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            for name, value in attrs.items():
                setattr(self, name, value)
"""


def test_attribute_values_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(write_package(tmp_path, {"odd.py": ODD})))
    odd = importlib.import_module("odd")
    values: dict[str, Any] = {
        "nan": math.nan,
        "inf": -math.inf,
        "big": 2**70,
        "tup": (1, "a", None, (2.5,)),
        "size": torch.Size([2, 3]),
        "dt": torch.bfloat16,
        "dev": torch.device("cpu"),
        "mapping": {1: "one", "two": [2, 2], (3, 4): True},
        "ordered": OrderedDict(b=1, a=2),
        "tags": {"x", "y"},
        "frozen": frozenset({3}),
        "raw": b"\x00\xff",
        "fn": odd.shifted,
        "part": odd.functools.partial(odd.shifted, by=3),
        "cls": torch.nn.ReLU,
        "gelu": torch.nn.functional.gelu,
        "sqrt": math.sqrt,
    }
    model = odd.Holder(**values)
    model.method = model.lin.forward
    model.again = model.lin.weight
    captured = capture_python(model)
    document = json.loads(captured.files["program/model.json"])
    assert document["root"]["attrs"]["gelu"] == {"$ref": "torch.nn.functional:gelu"}
    rebuilt = rebuild(captured, model)
    for name, value in values.items():
        got = getattr(rebuilt, name)
        if name == "nan":
            assert math.isnan(got)
        elif name == "part":
            assert got(1) == 4
        elif name == "fn":
            assert got(1, 2) == 3 and got.__module__.startswith("_torchferry_code_")
        else:
            assert got == value and type(got) is type(value), name
    assert rebuilt.method.__self__ is rebuilt.lin
    assert rebuilt.again is rebuilt.lin.weight


def test_unencodable_attributes_are_all_listed_with_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(write_package(tmp_path, {"odd.py": ODD})))
    odd = importlib.import_module("odd")
    model = odd.Holder(fn=lambda x: x, arr=odd.np.zeros(3), items=[1, odd.np.float32(2)])
    model.lin.fn = lambda x: x
    model.lin.register_forward_hook(lambda *args: None)
    with pytest.raises(PackagingError) as info:
        capture_python(model)
    message = str(info.value)
    assert info.value.unresolved == ["model.lin", "model.lin.fn", "model.fn", "model.arr", "model.items[1]"]
    assert "model.lin: has forward hooks; hooks are code attached at run time: remove them" in message
    assert "model.fn: a lambda; define a module-level function and store that instead" in message
    assert "model.arr: a numpy.ndarray object, which cannot be stored without pickle" in message
    assert "register_buffer" in message and "mode='export'" in message


def test_mocked_module_cannot_provide_the_model_classes(models_pkg: Path) -> None:
    with pytest.raises(PackagingError, match=r"models\.net: is mocked, but needed by class Net \(model\)"):
        capture_python(new_net(), mock=["models.net"])


def test_no_absolute_path_of_the_packing_machine_in_any_file(models_pkg: Path) -> None:
    captured = capture_python(new_net())
    produced = [*captured.files.values(), json.dumps(captured.program).encode()]
    for forbidden in {str(models_pkg), str(Path.cwd()), sys.prefix, str(Path.home())}:
        assert not any(forbidden.encode() in blob for blob in produced), forbidden
    rebuilt = rebuild(captured, new_net())
    assert sys.modules[type(rebuilt).__module__].__file__.startswith("<ferry:")  # type: ignore[union-attr]


def test_tracebacks_show_the_archive_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = "import torch\n\nclass Boom(torch.nn.Module):\n    def forward(self, x):\n"
    source += "        raise ValueError('boom')\n"
    monkeypatch.syspath_prepend(str(write_package(tmp_path, {"boom.py": source})))
    model = importlib.import_module("boom").Boom()
    rebuilt = rebuild(capture_python(model), model)
    with pytest.raises(ValueError, match="boom") as info:
        rebuilt(torch.ones(1))
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert frame.filename.startswith("<ferry:") and frame.filename.endswith("/boom.py")
    assert frame.line == "raise ValueError('boom')"
    assert linecache.getline(frame.filename, 3).startswith("class Boom")
    linecache.clearcache()
    assert "raise ValueError('boom')" in "".join(traceback.format_exception(info.value))


def test_missing_tensor_and_unknown_format_are_archive_errors(models_pkg: Path) -> None:
    model = new_net()
    captured = capture_python(model)
    state = dict(model.state_dict())
    del state["head.bias"]
    with pytest.raises(ArchiveError, match=r"the weights lack tensor 'head\.bias', needed by model\.head\.bias"):
        build_python_model(captured.program, captured.files.__getitem__, state, captured.tensors)
    with pytest.raises(ArchiveError, match="has format 99; this torchferry reads format 1"):
        build_python_model({**captured.program, "format": 99}, captured.files.__getitem__, state, captured.tensors)
