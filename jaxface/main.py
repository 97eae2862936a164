"""The ``jaxface`` command line.

  jaxface train --config configs/<file>.py:<variant> --workdir DIR [--config.<field>=<value> ...]
  jaxface eval  --config configs/<file>.py:<variant> --workdir DIR [--step N]
  jaxface quickstart --workdir DIR
  jaxface widerface-eval --pred PRED_DIR --gt GT_DIR [--out OUT_DIR]

Inference with trained workdirs (`jaxface.infer_cli`, `jaxface.analyzer`):
  jaxface detect IMAGE_OR_DIR --out DIR --detector WD [--score-threshold 0.5]
  jaxface verify IMG_A IMG_B --detector WD --recognizer WD [--far 1e-3]
  jaxface attributes IMAGE --detector WD --attributes WD
  jaxface identify --gallery DIR QUERY --detector WD --recognizer WD [--top-k 5]
  jaxface calibrate [--recognizer WD] [--attributes WD]   (verify's thresholds; LMLE centroids)
  jaxface export --detector WD --recognizer WD [--attributes WD] --out DIR

``--config.<field>=<value>`` overrides any declared field; an unknown field is an
error naming it.
"""

from __future__ import annotations

import json
import logging
import os
import sys

USAGE = __doc__


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
    # orbax logs every step of every save at INFO; keep its warnings and errors only.
    absl_logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= logging.WARNING or "orbax" not in record.pathname
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parse_config_flags(prog: str, argv: list[str], extra=()):
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

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
    try:
        fv([prog] + argv)
    except flags.Error as err:
        raise SystemExit(f"jaxface: {err}") from None
    except (AttributeError, KeyError) as err:  # an override of a field the config lacks
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        msg = str(err).strip("'\"").replace("\\n", " ")
        raise SystemExit(f"jaxface: unknown config field in {bad}: {msg}") from None
    if fv.config is None:
        raise SystemExit("jaxface: --config is required (e.g. --config configs/lmle.py:bce)")
    if fv.workdir is None:
        raise SystemExit("jaxface: --workdir is required")
    return fv


def cmd_train(argv):
    fv = _parse_config_flags("jaxface train", argv)
    from jaxface import train  # pylint: disable=import-outside-toplevel

    result = train.train_and_evaluate(fv.config, fv.workdir)
    print(
        json.dumps(
            {"status": result.status, "step": result.step, **result.eval_results},
            indent=2,
            default=float,
        )
    )
    return 0 if result.status in ("finished", "preempted", "stopped") else 1


def cmd_eval(argv):
    fv = _parse_config_flags(
        "jaxface eval", argv, extra=[("integer", "step", None, "checkpoint step")]
    )
    from jaxface import train  # pylint: disable=import-outside-toplevel

    results = train.evaluate_checkpoint(fv.config, fv.workdir, fv.step)
    print(json.dumps(results, indent=2, default=float))
    return 0


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
    p.add_argument("--only", default=None, help="comma-separated task names to run")
    args = p.parse_args(argv)
    quickstart.run(
        args.workdir, configs_dir=args.configs, only=args.only.split(",") if args.only else None
    )
    return 0


def cmd_widerface_eval(argv):
    from jaxface.evaluation import widerface  # pylint: disable=import-outside-toplevel

    return widerface.main(argv)


def _infer(name):
    def run(argv):
        from jaxface import infer_cli  # pylint: disable=import-outside-toplevel

        return infer_cli.COMMANDS[name](argv)

    run.__name__ = f"cmd_{name}"
    return run


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "quickstart": cmd_quickstart,
    "widerface-eval": cmd_widerface_eval,
    **{
        name: _infer(name)
        for name in ("detect", "verify", "attributes", "identify", "calibrate", "export")
    },
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"jaxface: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
        return 2
    _setup_logging(verbose=cmd in ("train", "eval", "quickstart"))
    if cmd in ("train", "eval", "quickstart"):
        from jaxface import parallel  # pylint: disable=import-outside-toplevel

        parallel.maybe_initialize()
    return int(COMMANDS[cmd](rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
