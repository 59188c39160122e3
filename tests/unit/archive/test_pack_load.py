"""pack → load_model → call/predict/inspect/verify on small real models (export mode)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchferry as ferry
from tests.archive_helpers import rebuild
from torchferry.archive.manifest import TensorSpec
from torchferry.errors import ArchiveError, InputError, PackagingError, UsageError
from torchferry.runtime.inputs import to_tensor
from torchferry.runtime.outputs import all_close, max_errors

pytestmark = pytest.mark.unit


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(2, 3)
        self.register_buffer("offset", torch.arange(3.0), persistent=False)

    def forward(self, features: torch.Tensor, extra: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.a(features) + self.b(extra) + self.offset + torch.tensor([0.5, 0.0, -0.5])
        return {"logits": logits, "best": logits.argmax(dim=1)}


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(64, 64, bias=False)
        self.head = nn.Linear(64, 64, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(x)))


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).reshape(3, 2)


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = TwoInputs().eval()
    path = tmp_path_factory.mktemp("pack") / "two.ferry"
    ferry.pack(
        model,
        path,
        example_inputs=(torch.randn(1, 4), torch.randn(1, 2)),
        name="two",
        version=3,
        metadata={"team": "vision"},
        description="two inputs",
    )
    return path, model


def test_manifest_describes_signature_and_batching(two_inputs: tuple[Path, nn.Module]) -> None:
    manifest = ferry.inspect(two_inputs[0])
    assert manifest.kind == "export" and manifest.name == "two" and manifest.version == "3"
    assert [s.describe() for s in manifest.signature.inputs] == ["features: float32[?,4]", "extra: float32[?,2]"]
    assert [s.describe() for s in manifest.signature.outputs] == ["logits: float32[?,3]", "best: int64[?]"]
    assert manifest.signature.output_structure == "dict"
    assert manifest.batching == {"dynamic_batch": True, "batch_dim": 0}
    assert manifest.metadata == {"team": "vision"} and manifest.description == "two inputs"
    assert manifest.requirements["torch"] == torch.__version__.split("+")[0]
    assert set(manifest.members) == {
        "weights.safetensors",
        "program/graph.json",
        "program/constants.safetensors",
        "examples/inputs.safetensors",
        "examples/outputs.safetensors",
    }


def test_loaded_model_matches_eager_on_other_batch_sizes(two_inputs: tuple[Path, nn.Module]) -> None:
    path, model = two_inputs
    loaded = ferry.load_model(path)
    for batch in (1, 5, 17):
        features, extra = torch.randn(batch, 4), torch.randn(batch, 2)
        got = loaded(features, extra=extra)
        want = model(features, extra)
        torch.testing.assert_close(got["logits"], want["logits"])
        assert torch.equal(got["best"], want["best"])


def test_predict_accepts_lists_numpy_and_one_unbatched_sample(two_inputs: tuple[Path, nn.Module]) -> None:
    path, model = two_inputs
    loaded = ferry.load_model(path)
    batch = loaded.predict({"features": np.ones((2, 4), dtype=np.float64), "extra": [[0.0, 1.0], [1.0, 0.0]]})
    assert batch["logits"].shape == (2, 3) and batch["logits"].dtype == np.float32
    single = loaded.predict({"features": [1.0, 2.0, 3.0, 4.0], "extra": [0.0, 0.0]})
    want = model(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.zeros(1, 2))["logits"][0]
    np.testing.assert_allclose(single["logits"], want.detach().numpy(), rtol=1e-6)
    assert single["best"].shape == ()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"features": [[1.0] * 4]}, "missing ['extra']"),
        ({"features": [[1.0] * 4], "extra": [[1.0] * 2], "bogus": 1}, "unexpected ['bogus']"),
        ({"features": [[1.0] * 5], "extra": [[1.0] * 2]}, "expected shape [?,4], got [1, 5]"),
        ({"features": [[[1.0] * 4]], "extra": [[1.0] * 2]}, "expected shape [?,4], got [1, 1, 4]"),
        ({"features": np.ones((1, 4), dtype=np.complex64), "extra": [[1.0] * 2]}, "expected dtype float32"),
        ({"features": [["a"] * 4], "extra": [[1.0] * 2]}, "as nested lists of numbers"),
        ({"features": [[1.0] * 4], "extra": [1.0, 2.0]}, "every input with a batch dimension, or none"),
    ],
)
def test_predict_rejects_bad_inputs_showing_expected_and_got(
    two_inputs: tuple[Path, nn.Module], inputs: object, message: str
) -> None:
    loaded = ferry.load_model(two_inputs[0])
    with pytest.raises(InputError) as info:
        loaded.predict(inputs)
    assert message in str(info.value)


def test_verify_reports_per_output_errors(two_inputs: tuple[Path, nn.Module]) -> None:
    report = ferry.verify(two_inputs[0])
    assert report.ok, str(report)
    assert [o.name for o in report.outputs] == ["logits", "best"]
    assert all(o.max_abs_error == 0.0 for o in report.outputs)
    assert "sha256 of 5 members: ok" in str(report)


def test_members_are_stored_uncompressed_and_64_byte_aligned(two_inputs: tuple[Path, nn.Module]) -> None:
    with zipfile.ZipFile(two_inputs[0]) as archive:
        infos = archive.infolist()
    assert infos[-1].filename == "ferry.json"
    raw = two_inputs[0].read_bytes()
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED
        name_len, extra_len = (
            int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
            int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
        )
        assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0


def test_tied_weights_are_stored_once(tmp_path: Path) -> None:
    model = Tied().eval()
    path = tmp_path / "tied.ferry"
    ferry.pack(model, path, example_inputs=torch.randn(2, 64))
    weights = ferry.inspect(path).members["weights.safetensors"].size
    assert weights < 64 * 64 * 4 * 1.5  # one 64x64 float32 matrix plus header, not two
    x = torch.randn(3, 64)
    torch.testing.assert_close(ferry.load_model(path)(x), model(x))


def test_archive_is_at_most_a_little_larger_than_weights_plus_program(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    path = tmp_path / "big.ferry"
    ferry.save(model.state_dict(), tmp_path / "bare.safetensors")
    manifest = ferry.pack(model, path, example_inputs=torch.randn(2, 256))
    bare = (tmp_path / "bare.safetensors").stat().st_size
    program = manifest.members["program/graph.json"].size
    examples = sum(d.size for n, d in manifest.members.items() if n.startswith("examples/"))
    assert path.stat().st_size <= bare * 1.01 + program + examples + 8192


def test_fixed_batch_model_gets_a_static_signature(tmp_path: Path) -> None:
    manifest = ferry.pack(FixedBatch().eval(), tmp_path / "fixed.ferry", example_inputs=torch.randn(3, 4))
    assert manifest.batching["dynamic_batch"] is False
    assert manifest.signature.inputs[0].shape == (3, 4)
    with pytest.raises(InputError, match=r"expected shape \[3,4\], got \[2, 4\]"):
        ferry.load_model(tmp_path / "fixed.ferry").predict(np.ones((2, 4), dtype=np.float32))


def test_pack_does_not_change_the_models_mode(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.train()
    ferry.pack(model, tmp_path / "m.ferry", example_inputs=torch.randn(2, 4))
    assert model.training


def test_labels_and_classify_postprocess(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Linear(4, 3).eval()
    path = tmp_path / "cls.ferry"
    ferry.pack(
        model, path, example_inputs=torch.randn(2, 4), labels=["a", "b", "c"], postprocess=ferry.Classify(top_k=2)
    )
    loaded = ferry.load_model(path)
    assert loaded.labels == ("a", "b", "c")
    x = torch.randn(4)
    ranked = loaded.predict(x.tolist())["output"]
    probs = model(x).detach().softmax(-1)
    assert [r["label"] for r in ranked] == [("a", "b", "c")[i] for i in probs.topk(2).indices.tolist()]
    assert ranked[0]["score"] == pytest.approx(float(probs.max()), rel=1e-5)


def test_classify_without_labels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs labels"):
        ferry.pack(
            nn.Linear(4, 3), tmp_path / "x.ferry", example_inputs=torch.randn(2, 4), postprocess=ferry.Classify()
        )
    assert not (tmp_path / "x.ferry").exists()


def test_export_mode_reports_why_a_model_cannot_export(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x - 1

    with pytest.raises(PackagingError, match=r"torch\.export could not export the model"):
        ferry.pack(DataDependent(), tmp_path / "dd.ferry", example_inputs=torch.randn(2, 3), mode="export")
    assert not (tmp_path / "dd.ferry").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"example_inputs": "text"}, "example_inputs must be a tensor"),
        ({"example_inputs": {"nope": torch.ones(1, 4)}}, "are not parameters of"),
        ({"example_inputs": torch.ones(1, 4), "mode": "fast"}, "mode must be one of"),
    ],
)
def test_bad_pack_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ferry.pack(nn.Linear(4, 2), tmp_path / "m.ferry", **kwargs)  # type: ignore[arg-type]


def test_graph_holds_no_stack_traces(two_inputs: tuple[Path, nn.Module]) -> None:
    with zipfile.ZipFile(two_inputs[0]) as archive:
        graph = json.loads(archive.read("program/graph.json"))
    nodes = graph["graph_module"]["graph"]["nodes"]
    assert nodes and all("stack_trace" not in node["metadata"] for node in nodes)
    assert __file__ not in json.dumps(graph)


def test_float_lists_are_not_truncated_into_integer_inputs() -> None:
    spec = TensorSpec("ids", "int64", (-1, 2))
    assert to_tensor(spec, [[1, 2]]).dtype == torch.int64
    with pytest.raises(InputError, match=r"expected dtype int64, got float(32|64)"):
        to_tensor(spec, [[1.7, 2.9]])
    assert to_tensor(TensorSpec("x", "float32", (-1, 2)), [[1, 2]]).dtype == torch.float32


def test_processing_steps_are_validated_when_an_archive_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "m.ferry"
    ferry.pack(nn.Linear(4, 3), path, example_inputs=torch.randn(2, 4), labels=["a", "b", "c"])

    def add_bad_step(manifest: dict[str, object]) -> None:
        manifest["postprocess"] = [{"op": "classify", "top_k": "five", "softmax": True}]

    (tmp_path / "bad.ferry").write_bytes(rebuild(path.read_bytes(), manifest=add_bad_step))
    with pytest.raises(ArchiveError, match=r"postprocess is invalid.*'top_k' must be a positive integer"):
        ferry.load_model(tmp_path / "bad.ferry")


def test_output_comparison_sees_imaginary_parts() -> None:
    a = torch.tensor([1 + 1j, 2 + 0j])
    b = torch.tensor([1 + 1j, 2 + 5j])
    assert not all_close(a, b, rtol=1e-4, atol=1e-5)
    assert max_errors(a, b)[0] == 5.0
    assert all_close(a, a.clone(), rtol=0, atol=0)


class Casts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() * 2 + x.to(torch.float64)


def test_dtype_casts_export_and_run(tmp_path: Path) -> None:
    """``.double()``/``.to(dtype)`` put ``aten._assert_tensor_metadata`` (no outputs) in the graph."""
    path = tmp_path / "casts.ferry"
    manifest = ferry.pack(Casts(), path, example_inputs=(torch.randn(2, 3),), mode="export")
    assert manifest.kind == "export"
    x = torch.randn(5, 3)
    out = ferry.load_model(path)(x)
    assert out.dtype == torch.float64 and torch.equal(out, Casts()(x))


def test_predict_refuses_inputs_that_disagree_on_the_batch(two_inputs: tuple[Path, nn.Module]) -> None:
    path, _ = two_inputs
    model = ferry.load_model(path)
    with pytest.raises(InputError, match=r"disagree on the batch size .*features: 2, extra: 3"):
        model.predict({"features": np.zeros((2, 4), np.float32), "extra": np.zeros((3, 2), np.float32)})
    with pytest.raises(InputError, match="disagree on the batch size"):  # no silent broadcast of one row
        model.predict({"features": np.zeros((2, 4), np.float32), "extra": np.zeros((1, 2), np.float32)})


class HalfOut(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2).to(torch.bfloat16)


def test_predict_returns_bfloat16_outputs_as_float32_arrays(tmp_path: Path) -> None:
    ferry.pack(HalfOut(), tmp_path / "bf.ferry", example_inputs=(torch.randn(2, 3),))
    out = ferry.load_model(tmp_path / "bf.ferry").predict([[1.0, 2.0, 3.0]])["output"]
    assert out.dtype == np.float32 and out.tolist() == [[2.0, 4.0, 6.0]]  # numpy has no bfloat16
