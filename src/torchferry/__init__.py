"""torchferry: move trained PyTorch models from the machine that trained them to the
machines that use them.

This release covers safe save/restore of training state::

    import torchferry as ferry
    ferry.save(model.state_dict(), "model.safetensors")
    report = ferry.load_into(model, "model.safetensors", rename={"module.": ""})
    ferry.save_checkpoint("ckpt.safetensors", model=model, optimizer=opt, epoch=3)
    ckpt = ferry.resume("ckpt.safetensors", model=model, optimizer=opt)
"""

from torchferry._version import __version__
from torchferry.errors import FerryError
from torchferry.state.checkpoint import Checkpoint, resume, save_checkpoint
from torchferry.state.load_into import load_into
from torchferry.state.report import LoadReport
from torchferry.state.tensors import load, save

__all__ = [
    "Checkpoint",
    "FerryError",
    "LoadReport",
    "__version__",
    "load",
    "load_into",
    "resume",
    "save",
    "save_checkpoint",
]
