"""TrainConfig: the table of settings. Recipes (recipes.py) fill it, CLI flags override it, validation.py checks it.

Each field is declared with `setting(...)`, which says everything else about it: the help of its
`cifarlab train` flag, its choices, whether a recipe may carry it and whether `--resume` may change
it. cli_flags.py makes the flags from these declarations. This module imports no torch, so `--help` is fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, Field, dataclass, fields

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("none", "step", "multistep", "cosine", "onecycle", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
ON_NAN = ("stop", "skip-step")
# translate: a crop from a reflect-padded image (no black borders); alt-flip: each image is
# mirrored in every other epoch (a seeded half of the images in even epochs, the rest in odd),
# so over two epochs the network sees both views of every image instead of a random 3/4.
# (Here, not in data/augment.py where they are implemented, because that package imports torch.)
AUGMENTATIONS = ("crop", "translate", "flip", "alt-flip", "jitter", "cutout")


def setting(default=MISSING, help: str | None = None, *, factory=MISSING, choices: tuple | None = None,
            metavar: str | None = None, flag: bool = True, off_help: str | None = None, in_recipes: bool = True,
            on_resume: bool = False) -> Field:
    """A TrainConfig field and the facts about it.

    Its flag is --NAME (with - for _), given as `help` describes; a bool that defaults to true is
    turned off by --no-NAME instead, and one given `off_help` gets both --NAME and --no-NAME.
    flag=False: no flag of its own (a recipe, or a hand-written flag in cli_flags.py, sets it).
    in_recipes=False: a recipe may not set it (where data and results live is the user's business).
    on_resume=True: `--resume` may change it (where the data is, where to run, what to print, how often to save).
    """
    meta = {"help": help, "choices": choices, "metavar": metavar, "flag": flag, "off_help": off_help,
            "in_recipes": in_recipes, "on_resume": on_resume}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


@dataclass
class TrainConfig:
    model: str = setting(
        "basic-cnn", in_recipes=False,
        help="basic-cnn | deeper-cnn | resnet18 | fast94 | resnet18-imagenet | ... (all: `cifarlab models`), or your "
        "own as module:factory (e.g. mynet:TinyNet, imported from the current folder or PYTHONPATH); a recipe made "
        "for one model (fast94, tuned-*) names it for you")
    dataset: str = setting(
        "cifar10", in_recipes=False,
        help="cifar10 | cifar100 | mnist | fashion-mnist, or your own images: folder:PATH (PATH/train/<class>/*.png, "
        "PATH/test/<class>/..., optional PATH/val/) or npz:FILE")
    # extra keywords for your own model's factory; cli_flags.py fills it from --model-arg KEY=VALUE
    model_args: dict = setting(factory=dict, flag=False, in_recipes=False)
    image_size: int | None = setting(
        None, "folder:/npz: resize every image to NxN (antialiased); needed when sizes differ", metavar="N",
        in_recipes=False)
    channels: int | None = setting(
        None, "folder:/npz: 1 = grayscale, 3 = RGB (default: as the first image)", choices=(1, 3), in_recipes=False)
    recipe: str | None = setting(None, flag=False, in_recipes=False)   # the recipe's name; the CLI's --recipe
    # the recipe asked for where it chose `recipe` by device (fast94 -> fast94-muon on a CPU), else None
    recipe_chosen_by: str | None = setting(None, flag=False, in_recipes=False)
    epochs: int = setting(10)
    batch_size: int = setting(64)
    eval_batch_size: int = setting(1000, "batch size for evaluation (default 1000)")
    eval_every: int = setting(
        1, "score val and test every N epochs and after the last (default 1); 0: after the last only, so the time "
        "to accuracy is training alone (fast94: 0)", metavar="N", on_resume=True)
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    lr: float = setting(1e-3, "peak learning rate")
    muon_lr: float = setting(
        0.02, "--optimizer muon: peak lr of the conv filters, whose momentum is orthogonalised (Muon); the other "
        "parameters take Nesterov SGD at --lr")
    muon_momentum: float = setting(0.95, "--optimizer muon: the conv filters' momentum (default 0.95)")
    muon_ns_steps: int = setting(
        5, "--optimizer muon: Newton-Schulz steps that orthogonalise each update (default 5; fast94-muon: 3)",
        metavar="N")
    muon_renorm: bool = setting(
        False, "--optimizer muon: before each step, rescale every conv filter tensor to norm sqrt(out channels), "
        "so its size stays fixed and the lr alone sets the step's relative size; the filters then take no weight "
        "decay (fast94-muon)")
    whiten_bias_epochs: float = setting(
        0.0, "fast94: the whitening stem's bias learns, at the BN shifts' lr (--norm-lr-factor) decaying linearly "
        "to 0, for the first N epochs, then stays frozen (fast94-muon: 3; default 0: it follows the run's schedule)",
        metavar="N")
    momentum: float = setting(0.9)
    nesterov: bool = setting(False, "Nesterov momentum (SGD)")
    weight_decay: float = setting(0.0, "L2 (SGD/Adam) or decoupled (AdamW) decay; not on BN/bias")
    decay_norms: bool = setting(False, "also decay normalisation parameters and biases (airbench94 decays its BN "
                                "shifts)")
    schedule: str = setting("none", "step = decay by --gamma every --step-size epochs; multistep = decay by --gamma "
                            "at each of the recipe's milestones (fractions of the run: he2015-cifar 0.5, 0.75); "
                            "linear = from the peak straight down towards 0 at the last step (fast94-muon)",
                            choices=SCHEDULES)
    step_size: int = setting(5, "epochs between step decays (default 5, as in the article)")
    gamma: float = setting(0.1, "step decay factor")
    # multistep: where the lr is cut, as fractions of all the steps, so --epochs scales the schedule with it
    milestones: list[float] = setting(factory=lambda: [0.5, 0.75], flag=False)
    # cosine: linear warm-up length; onecycle: the source of the rise fraction
    warmup_epochs: float = setting(0.0, "warm-up length for cosine / one-cycle")
    onecycle_start: float = setting(0.04, "one-cycle: the lr factor it rises from (default 0.04)", metavar="FACTOR")
    onecycle_end: float = setting(0.001, "one-cycle: the lr factor it decays to (default 0.001)", metavar="FACTOR")
    label_smoothing: float = setting(0.0)
    backbone_lr_factor: float = setting(
        1.0, "fine-tuning: every layer but the classifier learns at lr x this (0, 1]")
    norm_lr_factor: float = setting(
        1.0, "normalisation-layer parameters (BatchNorm, LayerNorm) learn at lr x this (fast94: 64)")
    lookahead: bool = setting(
        False, "lookahead weight averaging: every 5 steps pull the weights to their slow average",
        off_help="turn off a recipe's lookahead (ablation)")
    tta: bool = setting(
        False, "test-time augmentation: average predictions on each image and its mirror",
        off_help="turn off a recipe's TTA")
    tta_shift: int = setting(
        0, "the final evaluation also averages two copies moved PIXELS up-left and down-right (fast94: 1)",
        metavar="PIXELS")
    augment: list[str] = setting(
        factory=list, help=f"comma list of {','.join(AUGMENTATIONS)}, or none (translate: crop from a reflect-padded "
        "image; alt-flip: mirror each image every other epoch)")
    crop_padding: int = setting(4, flag=False)     # augmentation sizes: recipes only
    jitter: float = setting(0.2, flag=False)
    cutout_size: int = setting(8, flag=False)
    batchnorm: bool = setting(True, "build the model without BatchNorm (ablation)")
    init: str = setting("auto", "auto (the article's choice per model) | kaiming | xavier | default")
    dropout: bool = setting(True, "build the model without dropout (ablation)")
    skip: bool = setting(True, "build a residual model without its shortcuts: the plain net of the same layers "
                         "(ablation; resnet*, preact-resnet18, wrn-*)")
    val_size: int = setting(0, "hold out N train images (class-balanced, seeded) for validation")
    test: bool = setting(True, "never score the test split (a search's trials select on val alone: cifarlab tune)",
                         in_recipes=False)
    seed: int = setting(0)
    device: str = setting("auto", choices=DEVICES, in_recipes=False, on_resume=True)
    threads: int | None = setting(
        None, "CPU threads for this run (default: torch's, all physical cores; with --jobs N, cores/N). A CPU run's "
        "numbers depend on it: --jobs N --threads T equals --jobs 1 --threads T", metavar="N",
        in_recipes=False, on_resume=True)
    precision: str = setting(
        "auto", "auto = bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32", choices=PRECISIONS)
    channels_last: bool = setting(True)
    compile: bool = setting(
        False, "torch.compile the model for training (falls back to eager, with a warning, where it cannot "
        "compile); see BENCHMARKS.md for where it helps")
    data_dir: str | None = setting(
        None, "dataset root (default $CIFARLAB_DATA or ~/.cache/cifarlab)", in_recipes=False, on_resume=True)
    download: bool = setting(True, "never download; fail with a message naming the missing files", on_resume=True)
    out: str | None = setting(None, "run folder (default runs/<time>-<model>-<dataset>)", in_recipes=False)
    limit_train: int | None = setting(None, "train on a seeded subset of N images (quick runs)")
    quiet: bool = setting(False, "no progress output", in_recipes=False, on_resume=True)
    overwrite: bool = setting(False, "replace the run already in --out", in_recipes=False)
    tensorboard: bool = setting(
        True, "do not write TensorBoard event files (written to RUN/tensorboard when installed)", in_recipes=False,
        on_resume=True)
    diagnostics: int = setting(
        0, "every N optimizer steps (and the first), record each conv and linear layer's gradient norm, weight norm, "
        "update-to-weight ratio, output mean/std and the zero fraction of the ReLU after it, into "
        "RUN/diagnostics.jsonl and TensorBoard; draw them with `cifarlab diagnose RUN`. Changes no number of the "
        "run (default 0: off)", metavar="N", in_recipes=False, on_resume=True)
    on_nan: str = setting(
        "stop", "non-finite loss: stop and keep the last good checkpoint (default), or skip the batch", choices=ON_NAN)
    checkpoint_every: float = setting(
        0.0, "also save checkpoints/last.pt every MINUTES within an epoch (default: epoch ends only)",
        metavar="MINUTES", in_recipes=False, on_resume=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}
# what a recipe may not set: recipes.py refuses these keys
NOT_IN_RECIPES = frozenset(f.name for f in fields(TrainConfig) if not f.metadata["in_recipes"])
RESUME_MAY_CHANGE = tuple(f.name for f in fields(TrainConfig) if f.metadata["on_resume"])


def flags(f: Field) -> tuple[str, ...]:
    """The flags that set field `f`: ("--lr",), ("--no-batchnorm",), ("--tta", "--no-tta"); () for none."""
    if not f.metadata["flag"]:
        return ()
    name = "--" + f.name.replace("_", "-")
    if f.type == "bool" and f.default is True:
        return ("--no-" + name[2:],)
    return (name, "--no-" + name[2:]) if f.metadata["off_help"] else (name,)


def flag_text(name: str) -> str:
    """How a message names setting `name`: its flags ("--no-tensorboard", "--tta/--no-tta"), else --NAME."""
    spelled = next((flags(f) for f in fields(TrainConfig) if f.name == name), ())
    return "/".join(spelled) if spelled else "--" + name.replace("_", "-")
