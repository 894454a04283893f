"""pyganx.plugin as a contract: what it exports, the step context the engine hands a
plugin, the docstrings every method carries, and docs/plugins.md generated from them."""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import warnings
from pathlib import Path

import pytest
import torch

from pyganx import errors, flags, plugin, registry
from pyganx.engine.context import TrainContext
from pyganx.errors import UsageError

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _plugin_api_tool():
    spec = importlib.util.spec_from_file_location("plugin_api", DOCS / "plugin_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_docs_plugins_md_is_generated_from_the_docstrings():
    tool = _plugin_api_tool()
    page = (DOCS / "plugins.md").read_text()
    assert tool.page_with(tool.reference(), page) == page, "run python docs/plugin_api.py"
    for name in plugin.__all__:
        assert f"`{name}`" in page


def test_the_reference_follows_a_changed_docstring(monkeypatch):
    tool = _plugin_api_tool()
    page = (DOCS / "plugins.md").read_text()
    monkeypatch.setattr(plugin.GANPlugin.networks, "__doc__", "Something else.\n\nReturns:\n    x")
    assert tool.page_with(tool.reference(), page) != page


def test_all_is_the_api_and_every_name_resolves():
    assert set(plugin.__all__) == {"API_VERSION", "DATA_KINDS", "Batch", "DataInfo", "ExportSpec", "GANPlugin",
                                   "StepContext", "linear_decay", "linear_decay_schedulers"}
    for name in plugin.__all__:
        assert getattr(plugin, name) is not None


@pytest.mark.parametrize("name, moved", [("field", dataclasses.field),
                                         ("add_config_arguments", flags.add_dataclass_arguments),
                                         ("config_from_arguments", flags.dataclass_from_arguments),
                                         ("values_refused_by", errors.values_refused_by)])
def test_names_moved_out_of_the_api_still_import_with_a_warning(name, moved):
    with pytest.warns(DeprecationWarning, match=f"pyganx.plugin.{name} is deprecated"):
        assert getattr(plugin, name) is moved
    with pytest.raises(AttributeError):
        plugin.no_such_name  # noqa: B018


def _documented_methods():
    cls = plugin.GANPlugin
    return [(name, fn) for name, fn in vars(cls).items() if inspect.isfunction(fn)
            and (not name.startswith("_") or name == "__init__")]


@pytest.mark.parametrize("name, fn", _documented_methods(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_plugin_method_says_its_arguments_and_result(name, fn):
    doc = inspect.getdoc(fn) or ""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters if p != "self"]
    if params:
        assert "Args:" in doc, f"{name}: no Args section"
        for p in params:
            assert f"    {p}:" in doc or f"\n{p}:" in doc, f"{name}: argument {p} is not described"
    if sig.return_annotation not in ("None", None):
        assert "Returns:" in doc, f"{name}: no Returns section"


def test_the_engine_context_satisfies_the_step_context_protocol():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    ctx = TrainContext(torch.device("cpu"), {"G": opt}, None)
    assert isinstance(ctx, plugin.StepContext)
    # and what a plugin does with it works as the protocol says
    p = opt.param_groups[0]["params"][0]
    with ctx.autocast():
        loss = (p * 3).sum()
    ctx.backward(loss)
    assert p.grad is not None and torch.equal(p.grad, torch.full((2,), 3.0))
    ctx.step("G")
    assert p.grad is None and torch.allclose(p.detach(), torch.full((2,), 0.7))


def test_an_object_without_the_context_methods_is_not_a_step_context():
    class Half:
        device = torch.device("cpu")
        amp_dtype = None

        def backward(self, loss):
            pass

    assert not isinstance(Half(), plugin.StepContext)


def test_every_built_in_plugin_declares_its_class_attributes():
    for name in registry.names():
        cls = registry.get(name)
        assert dataclasses.is_dataclass(cls.Config), name
        assert cls.data_kind in plugin.DATA_KINDS, name
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sig = inspect.signature(cls.train_step)
        assert list(sig.parameters)[1:] == ["batch", "ctx"], name


def test_a_config_built_in_python_is_held_to_its_fields_choices():
    @dataclasses.dataclass
    class Cfg:
        loss: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
        size: int | None = dataclasses.field(default=None, metadata={"choices": (1, 2)})

    class Variant(plugin.GANPlugin):
        Config = Cfg

    info = plugin.DataInfo(1, 8)
    Variant(Cfg(loss="b", size=2), info)
    Variant(Cfg(), info)                    # None: an optional field left unset
    with pytest.raises(UsageError, match=r"^--loss must be one of a, b, got 'c'$"):
        Variant(Cfg(loss="c"), info)
    with pytest.raises(UsageError, match=r"^--size must be one of 1, 2, got 3$"):
        Variant(Cfg(size=3), info)


def test_a_field_with_a_flag_of_its_own_is_refused_under_that_flag():
    @dataclasses.dataclass
    class Opts:
        from_format: str = dataclasses.field(default="a", metadata={"flag": "--from", "choices": ("a",)})

    with pytest.raises(UsageError, match=r"^--from must be one of a, got 'b'$"):
        flags.check_choices(Opts(from_format="b"))
    with flags.choices_unchecked():         # as a trained run is rebuilt
        flags.check_choices(Opts(from_format="b"))
    with pytest.raises(UsageError, match=r"^--from must be one of a"):
        flags.check_choices(Opts(from_format="b"))
