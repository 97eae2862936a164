"""The jaxface command line.

  jaxface train --config configs/<file>.py:<variant> --workdir DIR [--config.<field>=<value> ...]
  jaxface eval  --config configs/<file>.py:<variant> --workdir DIR [--step N]
  jaxface quickstart --workdir DIR [--only TASK,...]
  jaxface widerface-eval --pred PRED_DIR --gt GT_DIR [--out OUT_DIR]

Inference with trained workdirs (jaxface/cli/):
  jaxface detect IMAGE_OR_DIR --out DIR --detector WD [--score-threshold 0.5]
      [--max-side 1024 | --canvas N] [--scales 0.5,1,2]   (the photo at its own scale)
  jaxface verify IMG_A IMG_B --detector WD --recognizer WD [--far 1e-3]
  jaxface attributes IMAGE --detector WD --attributes WD
  jaxface identify --gallery DIR QUERY --detector WD --recognizer WD [--top-k 5]
  jaxface calibrate [--recognizer WD] [--attributes WD]   (verify's thresholds; LMLE centroids)
  jaxface export --detector WD --recognizer WD [--attributes WD] --out DIR
  jaxface predict-wider --detector WD --images DIR --out DIR   (WIDER prediction files)

--config.<field>=<value> overrides any declared field; an unknown field is an error
naming it, and every value is checked before anything runs (ranges, positivity,
divisibility, NaN). "jaxface <command> --help" describes each command.

On CPU, train, eval and quickstart add XLA's YNNPACK fusion flags to XLA_FLAGS (1.3x
faster training steps; JAXFACE_XLA_CPU=xla keeps XLA's own defaults; see jaxface/xla_cpu.py).

Errors are one line on stderr ("jaxface <command>: <error>"); --debug (anywhere on the
line) or JAXFACE_DEBUG=1 shows the traceback instead.

Exit status: 0 success; 1 failure (an error, or nothing could be processed); 2 bad
arguments or an unusable input image; 3 finished, but some inputs were skipped
(detect and identify folder runs: each skipped image is named in the summary; eval: an
evaluator skipped unreadable images, named in its log and JSON). widerface-eval exits 2
on malformed input and 1 when no prediction file matched the ground truth.
"""

from __future__ import annotations

import json
import os
import sys

USAGE = __doc__

_CONFIG_HELP = {
    "train": "Train (and evaluate) a config in a workdir; resumes from the workdir's latest "
    "checkpoint. Refused while another run holds the workdir (its LOCK file).",
    "eval": "Run a config's evaluators on a checkpoint of a workdir (latest by default).",
}


def _config_command_help(cmd: str) -> str:
    extra = "  --step N           checkpoint step (default: the latest)\n" if cmd == "eval" else ""
    return (
        f"usage: jaxface {cmd} --config FILE.py:VARIANT --workdir DIR "
        f"[--config.<field>=<value> ...]{' [--step N]' if cmd == 'eval' else ''}\n\n"
        f"{_CONFIG_HELP[cmd]}\n\n"
        "  --config FILE.py:VARIANT   an experiment file of configs/ and one of its variants\n"
        "  --workdir DIR              checkpoints, logs, config.json, result.json\n"
        f"{extra}"
        "  --config.<field>=<value>   override a declared field (jaxface/config.py and the\n"
        "                             experiment file declare them); checked before running\n"
        "  --debug                    show tracebacks\n"
    )


def _setup_logging(verbose: bool = True):
    from absl import flags  # pylint: disable=import-outside-toplevel
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

    # The command line is ours, not absl's: mark its flags parsed so absl does not warn
    # "Logging before flag parsing" (their defaults are what we want).
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    # Training logs progress at INFO; inference commands print their own results.
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    absl_logging.use_absl_handler()
    # Third-party INFO chatter and known-harmless warnings (tfds, jax, orbax, clu's
    # hyperparameter dump) are dropped at the handler; see jaxface.logs.
    from jaxface import logs  # pylint: disable=import-outside-toplevel

    logs.install_filters(absl_logging.get_absl_handler())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def _close(word: str, choices, show=lambda m: m) -> str:
    """`` (did you mean X?)`` for the closest of ``choices``, or ``""``."""
    import difflib  # pylint: disable=import-outside-toplevel

    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {show(match[0])}?)" if match else ""


def _flat_keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for k in cfg.keys():
        v = cfg[k]
        out.append(prefix + k)
        if hasattr(v, "keys") and callable(v.keys):
            out += _flat_keys(v, f"{prefix}{k}.")
    return out


def precheck_config_args(argv: list[str]) -> str | None:
    """The first problem with a train/eval command line's --config, its variant and its
    --config.<field> overrides, as one line; None if there is none.

    Runs before logging, JAX or TensorFlow are set up: only the experiment file (a few
    milliseconds, it imports ml_collections) is loaded. Values are checked later, by
    `jaxface.config.validate`."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    import pathlib  # pylint: disable=import-outside-toplevel

    spec = _config_arg(argv)
    if spec is None:
        return None  # the flag parser names the missing --config
    path, _, variant = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        siblings = [p.name for p in file.parent.glob("*.py")] if file.parent.is_dir() else []
        hint = _close(file.name, siblings, lambda m: file.parent / m)
        return f"--config: no such file: {path}{hint}"
    try:
        mspec = importlib.util.spec_from_file_location(f"jaxface_precheck_{file.stem}", file)
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
    except Exception as err:  # pylint: disable=broad-except
        return f"--config {path}: cannot be loaded: {type(err).__name__}: {err}"
    variants = getattr(module, "VARIANTS", None)
    if variant and variants is not None and variant not in variants:
        hint = _close(variant, variants)
        known = hint or f"; known: {', '.join(variants)}"
        return f"--config {path}: unknown variant {variant!r}{known}"
    overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if not overrides or not hasattr(module, "get_config"):
        return None
    try:
        cfg = module.get_config(variant) if variant else module.get_config()
    except Exception as err:  # pylint: disable=broad-except
        return f"--config {spec}: {type(err).__name__}: {err}"
    keys = _flat_keys(cfg)
    for field in overrides:
        if field not in keys:
            return f"--config.{field}: {spec} has no field {field!r}{_close(field, keys)}"
    return None


def _parse_config_flags(prog: str, argv: list[str], extra=()):
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv):
        print(_config_command_help(prog.split()[-1]))
        raise SystemExit(0)
    fv = flags.FlagValues()
    # sys_argv: the override flags (--config.<field>) are declared from this argv.
    config_flags.DEFINE_config_file(
        "config",
        None,
        "config file, path.py:variant",
        flag_values=fv,
        lock_config=True,
        sys_argv=[prog] + argv,
    )
    flags.DEFINE_string(
        "workdir", None, "working directory (checkpoints, logs, results)", flag_values=fv
    )
    for kind, name, default, help_ in extra:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_, flag_values=fv)
    import warnings  # pylint: disable=import-outside-toplevel

    try:
        with warnings.catch_warnings():
            # ml_collections loads the experiment file with the deprecated
            # SourceFileLoader.load_module(); the file itself is ours and loads cleanly.
            warnings.filterwarnings(
                "ignore", message=r".*load_module\(\).*", category=DeprecationWarning
            )
            fv([prog] + argv)
    except flags.Error as err:
        raise SystemExit(f"jaxface: {err}") from None
    except (AttributeError, KeyError) as err:  # an override of a field the config lacks
        msg = str(err).strip("'\"").replace("\\n", " ")
        raise SystemExit(f"jaxface: unknown config field: {msg}") from None
    if fv.config is None:
        raise SystemExit("jaxface: --config is required (e.g. --config configs/lmle.py:bce)")
    if fv.workdir is None:
        raise SystemExit("jaxface: --workdir is required")
    from jaxface import config as config_lib  # pylint: disable=import-outside-toplevel

    try:
        config_lib.validate(fv.config)
    except config_lib.ConfigError as err:
        raise SystemExit(f"jaxface: {err}") from None
    return fv


def _json(obj) -> str:
    """Valid JSON of a result dict: a NaN or infinite metric is written as ``null``."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        try:
            f = float(v)
        except (TypeError, ValueError):
            return v
        if isinstance(v, (bool, int, str)):
            return v
        return f if f == f and abs(f) != float("inf") else None

    return json.dumps(clean(obj), indent=2, allow_nan=False)


def cmd_train(argv):
    fv = _parse_config_flags("jaxface train", argv)
    from jaxface import train  # pylint: disable=import-outside-toplevel

    result = train.train_and_evaluate(fv.config, fv.workdir)
    print(_json({"status": result.status, "step": result.step, **result.eval_results}))
    return 0 if result.status in ("finished", "preempted", "stopped") else 1


def cmd_eval(argv):
    fv = _parse_config_flags(
        "jaxface eval", argv, extra=[("integer", "step", None, "checkpoint step")]
    )
    from jaxface import train  # pylint: disable=import-outside-toplevel

    results = train.evaluate_checkpoint(fv.config, fv.workdir, fv.step)
    print(_json(results))
    skipped = any(k.endswith("_skipped_images") and v > 0 for k, v in results.items())
    return 3 if skipped else 0


def cmd_quickstart(argv):
    import argparse  # pylint: disable=import-outside-toplevel
    from jaxface import quickstart  # pylint: disable=import-outside-toplevel

    p = argparse.ArgumentParser(
        prog="jaxface quickstart",
        description="Train and evaluate the small variant of every task "
        "on the embedded synthetic data.",
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--configs", default=None, help="the configs/ directory (default: the repo's)")
    tasks = ("attributes", "recognition", "detection")
    p.add_argument(
        "--only", default=None, help=f"comma-separated tasks to run, of: {', '.join(tasks)}"
    )
    args = p.parse_args(argv)
    unknown = [t for t in (args.only or "").split(",") if t and t not in tasks]
    if unknown:
        p.error(f"--only: unknown task(s) {', '.join(unknown)}; tasks: {', '.join(tasks)}")
    quickstart.run(
        args.workdir, configs_dir=args.configs, only=args.only.split(",") if args.only else None
    )
    return 0


def cmd_widerface_eval(argv):
    from jaxface.evaluation import widerface  # pylint: disable=import-outside-toplevel

    return widerface.main(argv)


def _infer(name):
    def run(argv):
        from jaxface.cli import COMMANDS as INFERENCE  # pylint: disable=import-outside-toplevel

        return INFERENCE[name](argv)

    run.__name__ = f"cmd_{name}"
    return run


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "quickstart": cmd_quickstart,
    "widerface-eval": cmd_widerface_eval,
    **{
        name: _infer(name)
        for name in (
            "detect",
            "verify",
            "attributes",
            "identify",
            "calibrate",
            "export",
            "predict-wider",
        )
    },
}


def _one_line(err: BaseException) -> str:
    msg = str(err).strip() or type(err).__name__
    if isinstance(err, (KeyError, AttributeError, TypeError, IndexError, ZeroDivisionError)):
        msg = f"{type(err).__name__}: {msg}"  # internal errors: the type says what it was
    return msg


def _quiet_excepthook(previous):
    """After a failed checkpoint restore, TensorStore's reader threads finish their reads
    and call back into orbax's already closed event loop; each prints a traceback
    ("Event loop is closed") that says nothing about the error. Drop those only."""

    def hook(exc_type, exc, tb):
        if exc_type is RuntimeError and str(exc) == "Event loop is closed":
            return
        previous(exc_type, exc, tb)

    return hook


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("JAXFACE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        hint = _close(cmd, COMMANDS)
        known = ", ".join(COMMANDS)
        print(f"jaxface: unknown command {cmd!r}{hint}; commands: {known}", file=sys.stderr)
        return 2
    if cmd in ("train", "eval") and not any(a in ("-h", "--help", "-help") for a in rest):
        problem = precheck_config_args(rest)
        if problem:
            print(f"jaxface {cmd}: {problem}", file=sys.stderr)
            return 2
    if cmd in ("train", "eval", "quickstart"):
        from jaxface import xla_cpu  # pylint: disable=import-outside-toplevel

        try:
            xla_cpu.apply()  # before JAX starts: XLA reads its flags once
        except ValueError as err:
            print(f"jaxface {cmd}: {err}", file=sys.stderr)
            return 2
    _setup_logging(verbose=cmd in ("train", "eval", "quickstart"))
    if debug:
        return _run(cmd, rest)
    sys.excepthook = _quiet_excepthook(sys.excepthook)
    try:
        return _run(cmd, rest)
    except KeyboardInterrupt:
        print(f"jaxface {cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # pylint: disable=broad-except
        print(f"jaxface {cmd}: {_one_line(err)}", file=sys.stderr)
        return 1


def _run(cmd: str, rest: list[str]) -> int:
    if cmd in ("train", "eval", "quickstart"):
        from jaxface import logs, parallel  # pylint: disable=import-outside-toplevel

        logs.import_tensorflow_quietly()
        parallel.maybe_initialize()
    return int(COMMANDS[cmd](rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
