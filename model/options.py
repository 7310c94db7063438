"""The options of a training run: the one source that `unmask train` (typer), the `train-unmask`
flow and `python -m flows.train` (torchrun) read. Plain dataclasses, no torch: the command line
builds its options from these without loading the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


def _cli(help: str, default=None):
    """An option of both training command lines (the help text is theirs)."""
    return field(default=default, metadata={"help": help})


# What each generator trains with unless told otherwise. The small one is a residual over the paste
# that learns quickly at a higher rate; its GAN loss is kept small beside the L1 (it sharpens, the
# L1 places), and its EMA follows within about 200 steps (a CPU run is a few thousand steps; at
# 0.999 the EMA would still carry a fifth of the untrained weights after 1,500); the full one is
# DeepFill v2's recipe.
PRESETS = {
    "small": {"channels": 20, "lr_g": 3e-4, "lr_d": 3e-4, "adv_weight": 0.02, "disc_channels": 32,
              "ema_decay": 0.995},
    "full": {"channels": 32, "lr_g": 1e-4, "lr_d": 1e-4, "adv_weight": 0.1, "disc_channels": 64,
             "ema_decay": 0.999},
}


@dataclass
class TrainOptions:
    """Every option of a training run. Those with help text are the command line's (typer and
    argparse are both made from them); the rest are the loop's settings."""
    data: str = field(metadata={"help": "A preprocess OUTPUT folder (with shards/)."})
    steps: int | None = _cli("Train this many steps.")
    minutes: float | None = _cli("Train this many minutes (with or instead of --steps).")
    batch_size: int = _cli("Faces per step (per process).", 8)
    size: int | None = _cli("128 or 256 (default: the shards' size; smaller downscales).")
    device: str = _cli("auto, cpu or cuda.", "auto")
    run_dir: str | None = _cli("Checkpoints folder (default $UNMASK_HOME/runs/<time>).")
    resume: bool = _cli("Continue from the last checkpoint in --run-dir.", False)
    register_as: str = _cli("Registered model name in MLflow.", "unmask")
    generator: str = _cli("small (0.7 M parameters, a residual over the paste: for CPUs) or full "
                          "(DeepFill-v2 sized, 7 M: for GPUs).", "small")
    channels: int | None = _cli("Generator width (channels of its first layer; default: the generator's).")
    init: str | None = _cli("Start from these weights: `shipped` (the model in the package) or a "
                            "generator .safetensors file.")
    val_cases: int = _cli("Validation cases scored at every validation.", 64)
    workers: int = _cli("DataLoader worker processes per training process.", 2)
    lr_decay: float = _cli("Share of the run, at its end, over which both learning rates fall "
                           "linearly to zero (0: constant rates).", 0.25)
    lr_g: float | None = None       # default: the generator's preset
    lr_d: float | None = None
    betas: tuple[float, float] = (0.5, 0.999)
    adv_weight: float | None = None
    disc_channels: int | None = None
    ema_decay: float | None = None  # the EMA generator that is validated and registered
    drop_reference: float = 0.0     # rows given no reference at all
    generic_reference: float = 0.3  # rows given the generic (average-face) reference instead of theirs
    checkpoint_every: int = 500
    val_every: int = 250
    seed: int = 0
    compile: bool = False

    @classmethod
    def cli_fields(cls):
        """The fields both command lines offer, in order (`data` is the positional argument)."""
        return [f for f in fields(cls) if f.metadata.get("help")]

    def resolved(self) -> "TrainOptions":
        """These options with every unset one taken from the generator's preset."""
        if self.generator not in PRESETS:
            raise TrainError(f"--generator {self.generator!r}: use {' or '.join(PRESETS)}")
        out = replace(self)
        for name, value in PRESETS[self.generator].items():
            if getattr(out, name) is None:
                setattr(out, name, value)
        return out

    def check(self) -> None:
        """What makes a run impossible before anything starts, as one TrainError."""
        if self.steps is None and self.minutes is None:
            raise TrainError("say how long to train: --steps N or --minutes M")
        if self.generator not in PRESETS:
            raise TrainError(f"--generator {self.generator!r}: use {' or '.join(PRESETS)}")
        if not 0.0 <= self.lr_decay < 1.0:
            raise TrainError(f"--lr-decay {self.lr_decay}: use a share from 0 up to (not including) 1")
        if self.resume and not self.run_dir:
            raise TrainError("--resume needs --run-dir (the folder holding step-NNNNNNN checkpoints)")


class TrainError(RuntimeError):
    """A condition that stops training before it starts, with a message saying what to do."""
