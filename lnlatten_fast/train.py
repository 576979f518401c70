"""`python -m lnlatten_fast.train`: train LNLAttenNet with the paper's protocol.

With no arguments: the tiny preset on the built-in synthetic expression dataset, on this
machine's CPU or GPU. With --dataset and --data-root: a real dataset (SPEC §5).
Under `torchrun --nproc_per_node N -m lnlatten_fast.train ...` it trains data-parallel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cli, jsonio
from .config import PRESETS, LNLConfig
from .errors import MissingPathError, ParameterError, TrainingDivergedError, as_flag
from .data.datasets import DATASETS
from .data.datasets.synthetic import SPLIT_SIZES
from .training.precision import PRECISIONS
from .training.progress import LINE_INTERVAL_SECONDS, PROGRESS_MODES
from .training.settings import L2_MODES, TrainSettings
from .training.recipes import BALANCED_SAMPLING, SCHEDULES
from .training.run_dir import resumed_settings
from .training.trainer import TrainingInterrupted, train


def _preset_help() -> str:
    return "; ".join(f"{name}: {p.description}" for name, p in PRESETS.items())


def _per_preset(attribute: str) -> str:
    return ", ".join(f"{name} {getattr(p, attribute):g}" for name, p in PRESETS.items())


def build_parser() -> argparse.ArgumentParser:
    d = TrainSettings()
    p = argparse.ArgumentParser(
        prog="python -m lnlatten_fast.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=cli.HelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", default=None,
                   help="read the flags from a JSON or TOML file (keys: the flags' names, '-' or '_'; a 'model' "
                        "table may hold the model flags); flags on the command line override it. A run's own "
                        "RUN/config.json is such a file (without its --out): `--config runs/X/config.json --out "
                        "runs/Y` runs that experiment again")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                      help="synthetic is built in; the others read --data-root (each one's layout: the README's --dataset table)")
    data.add_argument("--data-root", default=None,
                      help="dataset folder (or CSV for fer2013/manifest); not needed for synthetic")
    data.add_argument("--workers", type=int, default=d.workers, help="processes decoding images into the cache")
    data.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $LNLATTEN_CACHE or ~/.cache/lnlatten_fast)")
    data.add_argument("--folds", type=int, default=None,
                      help="subject-independent K-fold cross-validation (default: 5 for ckplus, else the dataset's own split)")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction,
                      help="hold out this fraction of the training set (per class) as validation; 0 = none")
    data.add_argument("--strict", action="store_true",
                      help="an image that cannot be decoded stops the run, naming the file (default: it is "
                           "skipped, counted, and listed in RUN_DIR/skipped.txt)")
    data.add_argument("--synthetic-train", type=int, default=None,
                      help=f"synthetic training images (default {SPLIT_SIZES['train']})")
    data.add_argument("--synthetic-test", type=int, default=None,
                      help=f"synthetic test images (default {SPLIT_SIZES['test']})")
    data.add_argument("--synthetic-occlusion", type=float, default=0.0,
                      help="probability that a synthetic face (train and test) has an occluding rectangle")

    model = p.add_argument_group(
        "model", "LNLConfig's fields; each defaults to the preset's value (numbers also take 'auto' for it)")
    model.add_argument("--preset", choices=tuple(PRESETS), default=d.preset, help=_preset_help())
    cli.add_model_flags(model)

    run = p.add_argument_group("optimisation and run")
    run.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (the paper: 24)")
    run.add_argument("--batch-size", type=int, default=None, help=f"per process (default: the preset's: {_per_preset('batch_size')})")
    run.add_argument("--lr", type=float, default=None,
                     help=f"Adam learning rate, x0.95 every epoch (default: the preset's: {_per_preset('lr')})")
    run.add_argument("--l2-mode", choices=L2_MODES, default=d.l2_mode,
                     help="decoupled: W <- W - lr·2λ·W outside Adam (AdamW); loss: λ·Σ‖W‖² in the loss as eq. 3 "
                          "writes it (with Adam this stalls the network from Xavier init)")
    cli.add_device_flag(run, d.device)
    run.add_argument("--seed", type=int, default=d.seed,
                     help="seeds the weights, shuffling, augmentation, folds and synthetic faces")
    run.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<preset>-<time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last.pt (mid-epoch, where a SIGTERM, SIGUSR1 or "
                          "SIGINT stopped it); refused when last.pt is unreadable or lost but the run has "
                          "finished epochs")
    run.add_argument("--restart", action="store_true",
                     help="move the run in --out aside to --out/previous-N (nothing is deleted) and start over; "
                          "with --resume, with the run's own settings")
    run.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                     help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16: autocast on any device "
                          "(CPU autocast runs the GPU's precision path); master weights stay fp32")
    run.add_argument("--trace-every", type=int, default=d.trace_every,
                     help="every this many steps record w_g and w_l of --trace-images probe test images into "
                          "RUN/attention_trace.npz (0: no trace)")
    run.add_argument("--trace-images", type=int, default=d.trace_images, help="probe images in the attention trace")
    run.add_argument("--compile", action="store_true",
                     help="forward, loss, backward and the AdamW update as one torch.compile(fullgraph=True) "
                          "graph, compiled before the first epoch's clock (on CUDA, auto's conv choices are "
                          "measured eagerly first)")
    run.add_argument("--cuda-graphs", action="store_true",
                     help="with --compile on CUDA: capture the compiled step in a CUDA graph and replay it "
                          "(one launch cost per step instead of one per kernel)")
    run.add_argument("--deterministic", action="store_true",
                     help="cuDNN's deterministic algorithms and no autotuning (default: cudnn.benchmark picks "
                          "the fastest algorithm for the fixed training shapes)")
    run.add_argument("--progress", choices=PROGRESS_MODES, default=d.progress,
                     help="within an epoch, on stderr: bar, a progress bar redrawn in place; lines, a plain "
                          f"line every {LINE_INTERVAL_SECONDS:.0f} s with step, loss, img/s and ETA (for a log "
                          "file); none; auto: bar on a terminal, lines otherwise. Each epoch's line goes to "
                          "stdout in every mode")
    run.add_argument("--tensorboard", action="store_true",
                     help="log each epoch to RUN/tb for TensorBoard: loss, accuracies, lr, img/s, GPU telemetry "
                          "(CUDA), the confusion matrix and the probe faces' w_g (needs the [tensorboard] extra)")
    _add_recipe_flags(p, d)
    _add_backbone_flags(p, d)
    return p


def _add_recipe_flags(p: argparse.ArgumentParser, d: TrainSettings) -> None:
    recipes = p.add_argument_group(
        "recipes", "common FER training recipes; each is off by default, which is the paper's protocol, "
                   "and none may change on --resume")
    recipes.add_argument("--balanced-sampling", choices=BALANCED_SAMPLING, default=d.balanced_sampling,
                         help="class-balanced sampling: each epoch draws as many images as the training set holds, "
                              "with replacement, weighted 1/n_c (inverse: every class equally often) or "
                              "1/sqrt(n_c) (sqrt); under torchrun too")
    recipes.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="EPS",
                         help="cross-entropy's label smoothing (default 0: none)")
    recipes.add_argument("--ema", type=float, default=d.ema, metavar="DECAY",
                         help="keep an exponential moving average of the weights (and float buffers), updated "
                              "after every step; evaluation, best.pt and the localization figures use it, last.pt "
                              "holds both (default 0: none; typical 0.999)")
    recipes.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                         help="paper: lr x0.95 every epoch; cosine: per epoch, a linear warm-up over "
                              "--warmup-epochs, then half a cosine from lr to 0 over the remaining epochs")
    recipes.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, metavar="W",
                         help="with --schedule cosine: epoch e < W trains at lr·(e+1)/W")
    recipes.add_argument("--clip-grad-norm", type=float, default=d.clip_grad_norm, metavar="MAX",
                         help="scale the gradients to a global L2 norm of at most MAX before each update (default 0: none)")
    recipes.add_argument("--mixup", type=float, default=d.mixup, metavar="ALPHA",
                         help="mixup with λ ~ Beta(ALPHA, ALPHA) per batch; the loss is the λ-weighted combination "
                              "of the two labels' cross-entropies (default 0: none)")
    recipes.add_argument("--cutmix", type=float, default=d.cutmix, metavar="ALPHA",
                         help="cutmix with λ ~ Beta(ALPHA, ALPHA) per batch, λ then the uncovered fraction "
                              "(default 0: none; not with --mixup)")


def _add_backbone_flags(p: argparse.ArgumentParser, d: TrainSettings) -> None:
    backbone = p.add_argument_group(
        "backbone training", "with a --backbone other than unet (--backbone, --backbone-levels and "
                             "--backbone-weights are model flags, above)")
    backbone.add_argument("--freeze-backbone-epochs", type=int, default=d.freeze_backbone_epochs, metavar="K",
                          help="the first K epochs train the head alone, the backbone's weights as loaded")
    backbone.add_argument("--backbone-lr-scale", type=float, default=d.backbone_lr_scale, metavar="S",
                          help="the backbone's learning rate is the run's (scheduled) lr x S")


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The run the flags describe: the preset's model with the model flags given."""
    run = {k: v for k, v in vars(args).items() if k not in cli.MODEL_FLAGS and k != "config"}
    return TrainSettings(**run, model=LNLConfig.preset(args.preset, **cli.model_overrides(args)))


# A run's config.json names its own directory and how it was started; re-running it is a new run.
_RUN_DIRECTORY_FIELDS = ("out", "resume", "restart")


def _read_config_file(path: Path) -> tuple[dict, bool]:
    """The file's table: {flag name: value}, a nested "model" table flattened into it, and
    whether it is a run's config.json ({"settings": {...}, "model": {...}}), which gives its
    settings less _RUN_DIRECTORY_FIELDS."""
    if not path.is_file():
        raise MissingPathError("config", f"{path}: no such file (expected a JSON or TOML file of flags)")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
                import tomli as tomllib
            table = tomllib.loads(text)
        else:
            table = json.loads(text)
    except ValueError as error:  # json.JSONDecodeError and tomllib.TOMLDecodeError both are
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ParameterError("config", f"{path}: not valid {kind} ({error})") from None
    if not isinstance(table, dict):
        raise ParameterError("config", f"{path}: expected a table of flags, got a {type(table).__name__}")
    from_run = isinstance(table.get("settings"), dict)
    if from_run:
        others = sorted(set(table) - {"settings", "model"})
        if others or table.get("model", table["settings"].get("model")) != table["settings"].get("model"):
            raise ParameterError("config", f"{path}: a run's config.json holds 'settings' and, equal to its "
                                           "settings' model, 'model'; got " + (", ".join(others) if others else
                                                                               "a 'model' other than the settings' one"))
        table = {k: v for k, v in table["settings"].items() if k not in _RUN_DIRECTORY_FIELDS}
    table = {k.replace("-", "_"): v for k, v in table.items()}
    model = table.pop("model", None) or {}
    if not isinstance(model, dict):
        raise ParameterError("config", f"{path}: 'model' must be a table of model flags")
    clashes = sorted(set(model) & set(table))
    if clashes:
        raise ParameterError("config", f"{path}: {', '.join(clashes)} given both in 'model' and outside it")
    return {**table, **{k.replace("-", "_"): v for k, v in model.items()}}, from_run


def _unsettable_differences(table: dict, flags: set[str]) -> dict:
    """The table's entries that no flag sets, with a value other than the one the run gets
    anyway: TrainSettings' default, or the preset's model value. A run made through the Python
    API with such a value cannot be re-run from the command line."""
    preset = table.get("preset", TrainSettings().preset)
    preset_model = LNLConfig.preset(preset).to_dict() if preset in PRESETS else {}
    run_defaults = TrainSettings().to_dict()
    differing = {}
    for name, value in table.items():
        if name in flags:
            continue
        if name in run_defaults:
            expected = run_defaults[name]
        elif name in preset_model:
            expected = preset_model[name]
        else:
            differing[name] = value
            continue
        if json.loads(jsonio.dumps(expected)) != value:  # as JSON holds it: tuples are lists
            differing[name] = value
    return differing


def config_file_arguments(parser: argparse.ArgumentParser, path: Path) -> tuple[list[str], dict, bool]:
    """The command-line arguments the config file `path` stands for (ParameterError("config")
    naming the file and the entry when one is not a flag or not a valid value), with the file's
    table and whether it is a run's config.json."""
    table, from_run = _read_config_file(path)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    unknown = _unsettable_differences(table, set(actions))
    if unknown:
        described = ", ".join(f"{k} = {v!r}" for k, v in sorted(unknown.items()))
        raise ParameterError("config", f"{path}: {described}: not a flag of this command, or a value no flag sets "
                                       "(only the defaults can be re-run)")
    preset = table.get("preset", TrainSettings().preset)
    preset_model = LNLConfig.preset(preset).to_dict() if preset in PRESETS else {}
    arguments = []
    for name, value in table.items():
        action = actions.get(name)
        if action is None:
            continue
        flag = as_flag(name)
        if isinstance(action, argparse.BooleanOptionalAction):
            arguments.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ParameterError("config", f"{path}: {name} must be true or false, got {value!r}")
            arguments += [flag] if value else []
        elif value is None:
            if action.default is not None and action.default is not argparse.SUPPRESS:
                raise ParameterError("config", f"{path}: {name} cannot be null (its default is {action.default!r})")
            if action.default is argparse.SUPPRESS and preset_model.get(name) is not None:
                arguments += [flag, "none"]  # a number field of the model (overlap): none is a value
        elif isinstance(value, list):  # TOML's and JSON's arrays: a comma list, as backbone_levels takes
            arguments += [flag, ",".join(map(str, value))]
        else:
            arguments += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return arguments, table, from_run


def parse_train_args(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The flags of `argv`, with --config FILE's entries placed before them (so the command line
    overrides the file); also the arguments that stood for them."""
    args = parser.parse_args(argv)
    if args.config is None:
        return args, argv
    path = Path(args.config)
    from_file, table, from_run = config_file_arguments(parser, path)
    if from_run and "preset" in cli.given_flags(parser, argv) and args.preset != table.get("preset"):
        raise ParameterError("preset", f"cannot differ from the preset of `config` {path} ({table.get('preset')}): "
                                       "a run's config.json sets every model field its preset chose, so another "
                                       "preset would be mixed with it; write a config file of the flags you want")
    reject = parser.error

    def name_the_file(message: str):
        raise ParameterError("config", f"{path}: {message}")

    parser.error = name_the_file
    try:
        parser.parse_args(from_file)
    finally:
        parser.error = reject
    combined = from_file + list(argv)
    return parser.parse_args(combined), combined


def resumed_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> TrainSettings:
    """--resume: the run's own settings (from its checkpoint); a flag given on this command line
    may only repeat them, except --epochs, --device, --workers, --out (and --cache-dir,
    --compile, --cuda-graphs, --deterministic, --progress, --tensorboard and the trace flags,
    which change neither the data nor the math)."""
    given = cli.given_flags(parser, argv) - set(cli.MODEL_FLAGS) - {"config"}
    changes = {name: getattr(args, name) for name in given}
    changes.update(cli.model_overrides(args))
    return resumed_settings(Path(args.out), changes)


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, argv = parse_train_args(parser, argv)
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error)
    if args.resume and args.out is None:
        parser.error("--resume needs --out RUN_DIR (the run to continue)")
    try:
        train(resumed_from_args(parser, args, argv) if args.resume else settings_from_args(args))
    except cli.LIBRARY_ERRORS as error:
        return cli.fail(error)
    except TrainingInterrupted as stop:
        print(f"{stop}; continue it with --resume --out {stop.run_dir}", file=sys.stderr, flush=True)
        return stop.exit_status
    except TrainingDivergedError as error:
        print(f"error: {error}", file=sys.stderr)
        return cli.RUN_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
