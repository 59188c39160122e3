"""Baseline of benchmarks/serving.py: the naive FastAPI app, one request = one forward.

What people write first: the modules built from their source, ``load_state_dict`` of a
``torch.save`` file, a pydantic body ``{"inputs": [...]}``, ``torch.tensor`` of the nested
list, the forward under ``torch.inference_mode``, and the output as ``.tolist()`` in the JSON
answer. The route is a plain ``def``, so FastAPI runs it in its thread pool (an ``async def``
would block the event loop during the forward). No batching, no queue bound.

    SERVING_BENCH_WEIGHTS=DIR uvicorn fastapi_app:app --app-dir benchmarks/serving_apps --port 8000 --workers 1

``DIR`` holds ``iris.pt``, ``lenet.pt`` and ``resnet18.pt`` (state_dicts); the benchmark writes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from bench_models import MODELS
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

torch.set_num_threads(int(os.environ.get("SERVING_BENCH_TORCH_THREADS", "1")))
WEIGHTS = Path(os.environ["SERVING_BENCH_WEIGHTS"])

models: dict[str, torch.nn.Module] = {}
for name, factory in MODELS.items():
    model = factory()
    model.load_state_dict(torch.load(WEIGHTS / f"{name}.pt", weights_only=True))
    models[name] = model.eval()

app = FastAPI(title="naive FastAPI baseline")


class PredictRequest(BaseModel):
    inputs: list[Any]


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict/{name}")
def predict(name: str, request: PredictRequest) -> dict[str, Any]:
    if name not in models:
        raise HTTPException(status_code=404, detail=f"no model {name}")
    x = torch.tensor(request.inputs, dtype=torch.float32)
    with torch.inference_mode():
        y = models[name](x)
    return {"model": name, "outputs": y.tolist()}
