"""Baseline of benchmarks/serving.py: the Flask app of seed article 002 ("deploy your PyTorch model").

As the article writes it: a module-level model loaded with ``load_state_dict(torch.load(PATH))``,
a route that takes ``request.get_json()``, makes a tensor, runs the model under
``torch.no_grad()`` and answers with ``jsonify``, and ``app.run(...)`` at the bottom: Flask's
own development server (Werkzeug), which is threaded by default (one thread per connection,
HTTP/1.1 keep-alive). Two changes from the article: ``debug=False`` (debug mode starts the
reloader, a second process, and the interactive debugger) and ``host="127.0.0.1"``. Werkzeug's
access line per request is left on, as in the article.

    SERVING_BENCH_WEIGHTS=DIR python benchmarks/serving_apps/flask_app.py --port 8000
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from bench_models import MODELS
from flask import Flask, abort, jsonify, request

torch.set_num_threads(int(os.environ.get("SERVING_BENCH_TORCH_THREADS", "1")))
WEIGHTS = Path(os.environ["SERVING_BENCH_WEIGHTS"])

models = {}
for name, factory in MODELS.items():
    model = factory()
    model.load_state_dict(torch.load(WEIGHTS / f"{name}.pt", weights_only=True))
    model.eval()
    models[name] = model

app = Flask(__name__)


@app.route("/health")
def health():  # type: ignore[no-untyped-def]
    return jsonify(status="ok")


@app.route("/predict/<name>", methods=["POST"])
def predict(name):  # type: ignore[no-untyped-def]
    if name not in models:
        abort(404)
    data = request.get_json()
    x = torch.tensor(data["inputs"], dtype=torch.float32)
    with torch.no_grad():
        y = models[name](x)
    return jsonify({"model": name, "outputs": y.tolist()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    app.run(host="127.0.0.1", port=args.port, debug=False, threaded=True)
