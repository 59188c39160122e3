"""Declarative processing: an image input decoded and normalized, scores turned into labels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import torchferry as ferry
from torchferry.errors import InputError, UsageError

pytestmark = pytest.mark.unit

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = TinyConv().eval()
    path = tmp_path_factory.mktemp("img") / "img.ferry"
    ferry.pack(
        model,
        path,
        example_inputs=torch.randn(2, 3, 8, 8),
        labels=["cat", "dog", "owl"],
        preprocess=ferry.ImageInput(resize=10, center_crop=8, mean=MEAN, std=STD),
        postprocess=ferry.Classify(top_k=3, softmax=True),
    )
    return path, model


def reference(array: np.ndarray, model: nn.Module) -> torch.Tensor:
    image = Image.fromarray(array).convert("RGB")
    width, height = image.size
    scale = 10 / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    left, top = (image.size[0] - 8) // 2, (image.size[1] - 8) // 2
    pixels = np.asarray(image.crop((left, top, left + 8, top + 8)), dtype=np.float32) / 255
    normalized = (pixels - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    x = torch.from_numpy(normalized.transpose(2, 0, 1).copy()).unsqueeze(0)
    return model(x).detach().softmax(-1)[0]


def test_encoded_image_is_decoded_resized_cropped_normalized(image_model: tuple[Path, nn.Module]) -> None:
    path, model = image_model
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    ranked = ferry.load_model(path).predict(png_bytes(array))["output"]
    probs = reference(array, model)
    assert [r["label"] for r in ranked] == [["cat", "dog", "owl"][i] for i in probs.argsort(descending=True)]
    assert [r["score"] for r in ranked] == pytest.approx(sorted(probs.tolist(), reverse=True), rel=1e-5)


def test_a_list_of_images_is_a_batch(image_model: tuple[Path, nn.Module]) -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8) for _ in range(3)]
    ranked = ferry.load_model(image_model[0]).predict([png_bytes(a) for a in arrays])["output"]
    assert len(ranked) == 3 and all(len(r) == 3 for r in ranked)


def test_undecodable_bytes_are_an_input_error(image_model: tuple[Path, nn.Module]) -> None:
    with pytest.raises(InputError, match="could not be decoded"):
        ferry.load_model(image_model[0]).predict(b"not an image")


def test_an_image_smaller_than_the_crop_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "crop.ferry"
    ferry.pack(TinyConv(), path, example_inputs=torch.randn(2, 3, 8, 8), preprocess=ferry.ImageInput(center_crop=8))
    with pytest.raises(InputError, match="smaller than the 8x8 crop"):
        ferry.load_model(path).predict(png_bytes(np.zeros((4, 40, 3), dtype=np.uint8)))


def test_tensors_still_go_straight_in(image_model: tuple[Path, nn.Module]) -> None:
    path, model = image_model
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ferry.load_model(path)(x), model(x))


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (ferry.ImageInput(mean=(0.5, 0.5)), "'mean' must list 3 numbers"),
        (ferry.ImageInput(std=(1.0, 0.0, 1.0)), "'std' must not contain 0"),
        (ferry.ImageInput(channels="CMYK"), "'channels' must be RGB, BGR or L"),
        (ferry.ImageInput(input="nope"), "must name one of the model inputs"),
        ({"op": "sharpen"}, "unknown op 'sharpen'"),
    ],
)
def test_bad_steps_are_refused_at_pack_time(tmp_path: Path, step: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ferry.pack(TinyConv(), tmp_path / "x.ferry", example_inputs=torch.randn(2, 3, 8, 8), preprocess=step)
