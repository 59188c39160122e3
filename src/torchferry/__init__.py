"""torchferry: move trained PyTorch models from the machine that trained them to the
machines that use them.

Safe save/restore of training state, and self-contained model archives::

    import torchferry as ferry
    ferry.save(model.state_dict(), "model.safetensors")
    report = ferry.load_into(model, "model.safetensors", rename={"module.": ""})
    ferry.save_checkpoint("ckpt.safetensors", model=model, optimizer=opt, epoch=3)
    ckpt = ferry.resume("ckpt.safetensors", model=model, optimizer=opt)
    ferry.pack(model, "model.ferry", example_inputs=x)  # no source needed to open it
    served = ferry.load_model("model.ferry")            # served(x), served.predict(...)
    ferry.serve("model.ferry", port=8080)               # HTTP: OIP v2, KServe v1, /predict
"""

from torchferry._version import __version__
from torchferry.archive.manifest import Manifest
from torchferry.archive.processing import Classify, ImageInput
from torchferry.errors import FerryError
from torchferry.registry.api import inspect, load_model, verify
from torchferry.registry.registry import Registry
from torchferry.runtime.pack import pack
from torchferry.runtime.packaged import Packaged
from torchferry.runtime.verify import VerifyReport
from torchferry.serving.api import serve
from torchferry.state.checkpoint import Checkpoint, resume, save_checkpoint
from torchferry.state.load_into import load_into
from torchferry.state.report import LoadReport
from torchferry.state.tensors import load, save

__all__ = [
    "Checkpoint",
    "Classify",
    "FerryError",
    "ImageInput",
    "LoadReport",
    "Manifest",
    "Packaged",
    "Registry",
    "VerifyReport",
    "__version__",
    "inspect",
    "load",
    "load_into",
    "load_model",
    "pack",
    "resume",
    "save",
    "save_checkpoint",
    "serve",
    "verify",
]
