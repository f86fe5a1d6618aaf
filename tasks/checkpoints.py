"""Training checkpoints: everything needed to continue a run exactly where it stopped.

    checkpoints/step-000050/
        model.safetensors      the encoder's weights
        optimizer.pt           AdamW state (tensors and numbers only: loaded with torch.load(weights_only=True))
        scheduler.pt           learning-rate schedule position (idem)
        rng.safetensors        torch's CPU (and CUDA) random generator states: dropout continues the same way
        trainer_state.json     the step and the batch sampler's state

A checkpoint is written under a temporary name and renamed into place (``hbir.core.files``), so a kill mid-write
leaves only complete checkpoints behind. Nothing is unpickled on load: safetensors, JSON, or ``weights_only=True``.
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from hbir.core.errors import HbirError, shorten
from hbir.core.files import replace_dir
from models.encoder import BiEncoder

PREFIX = "step-"


@dataclass(frozen=True)
class TrainerState:
    step: int  # steps done
    sampler: dict


def save_checkpoint(
    checkpoint_dir: Path,
    state: TrainerState,
    encoder: BiEncoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int = 2,
    protect: int | None = None,
) -> Path:
    """Write the checkpoint of ``state.step`` and delete all but the ``keep`` newest and that of step ``protect``;
    returns its directory."""
    final = checkpoint_path(checkpoint_dir, state.step)

    def write(work: Path) -> None:
        save_model(encoder.model, str(work / "model.safetensors"))
        torch.save(optimizer.state_dict(), work / "optimizer.pt")
        torch.save(scheduler.state_dict(), work / "scheduler.pt")
        save_file(_rng_states(), work / "rng.safetensors")
        (work / "trainer_state.json").write_text(json.dumps({"step": state.step, "sampler": state.sampler}))

    replace_dir(final, write)  # a step trained again after a resume replaces its checkpoint
    kept = checkpoint_path(checkpoint_dir, protect) if protect is not None else None
    for old in checkpoints(checkpoint_dir)[:-keep]:
        if old != kept:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    """The folder of step ``step``'s checkpoint."""
    return checkpoint_dir / f"{PREFIX}{step:06d}"


def checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The complete checkpoints in ``checkpoint_dir``, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(path for path in checkpoint_dir.iterdir() if path.name.startswith(PREFIX) and path.is_dir())


def load_checkpoint(
    path: Path,
    encoder: BiEncoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainerState:
    """Restore weights, optimiser, schedule and random generators from ``path``; returns the trainer state."""
    device = encoder.device
    try:
        warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)  # it is refused either way
        load_model(encoder.model, str(path / "model.safetensors"), device=str(device))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        _set_rng_states(load_file(path / "rng.safetensors"))
        saved = json.loads((path / "trainer_state.json").read_text())
    except pickle.UnpicklingError:  # weights_only refused it: nothing of it ran
        raise HbirError(
            f"checkpoint {path} holds objects hbir does not load (it was not written by hbir); nothing of it was run."
            " Delete that folder to continue from the checkpoint before it, or start a new run"
        ) from None
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise HbirError(
            f"checkpoint {path} is damaged ({type(error).__name__}: {shorten(str(error), 200)}): delete that folder "
            "to continue from the checkpoint before it, or start a new run"
        ) from None
    return TrainerState(step=saved["step"], sampler=saved["sampler"])


def load_weights(path: Path, encoder: BiEncoder) -> None:
    """Load only the encoder weights of checkpoint ``path`` (to make it the run's model)."""
    load_model(encoder.model, str(path / "model.safetensors"), device=str(encoder.device))


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states |= {f"cuda:{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
    return states


def _set_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[f"cuda:{i}"] for i in range(torch.cuda.device_count()) if f"cuda:{i}" in states]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
