"""The quickstart: the small variant of every task, trained and evaluated on the
embedded synthetic data, then one results table (printed, and written as
``results.json`` and ``results.md`` in the workdir) and a one-page HTML report
(``report.html``: the table, each run's training curves, its evaluation pictures and
metrics; `jaxface.report`).

Each task adds its entry to :data:`ENTRIES`.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time

from jaxface import progress

# (row label, config file relative to configs/, variant, headline metrics)
ENTRIES = [
    (
        "attributes / LMLE",
        "lmle.py",
        "synthetic",
        ("cluster_knn/mean_balanced_accuracy", "cluster_knn/mean_accuracy"),
    ),
    (
        "recognition / DREAM",
        "dream.py",
        "synthetic",
        (
            "verification/ff_accuracy_mean",
            "verification/fp_accuracy_mean",
            "verification/fp_eer_mean",
            "identification/profile_rank1",
        ),
    ),
    (
        "detection / ScaleFace 3 branches",
        "scaleface.py",
        "synthetic",
        ("wider/ap_easy", "wider/ap_medium", "wider/ap_hard"),
    ),
]


def find_configs_dir(configs_dir: str | None = None) -> pathlib.Path:
    candidates = (
        [configs_dir]
        if configs_dir
        else ["configs", pathlib.Path(__file__).resolve().parents[1] / "configs"]
    )
    for c in candidates:
        p = pathlib.Path(c)
        if (p / "lmle.py").exists():
            return p
    raise FileNotFoundError(
        "the configs/ directory was not found; run from the repository root or pass --configs"
    )


def load_config(path: pathlib.Path, variant: str):
    import importlib.util  # pylint: disable=import-outside-toplevel

    spec = importlib.util.spec_from_file_location(f"jaxface_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def run(workdir: str, *, configs_dir: str | None = None, only=None) -> list[dict]:
    from jaxface import train  # pylint: disable=import-outside-toplevel

    cdir = find_configs_dir(configs_dir)
    os.makedirs(workdir, exist_ok=True)
    data_dir = os.path.join(workdir, "tensorflow_datasets")
    rows, runs = [], []
    t_all = time.time()
    configs = [(e, load_config(cdir / e[1], e[2])) for e in ENTRIES]
    configs = [(e, c) for e, c in configs if not only or c.task in only]
    for n, ((label, file, variant, headline), config) in enumerate(configs, 1):
        if not config.data.data_dir:
            config.data.data_dir = data_dir
        run_dir = os.path.join(workdir, f"{pathlib.Path(file).stem}_{variant}")
        t0 = time.time()
        logging.info(
            "quickstart %d/%d: %s (configs/%s:%s; data, compilation, %d steps, evaluation)",
            n,
            len(configs),
            label,
            file,
            variant,
            int(config.num_train_steps),
        )
        result = train.train_and_evaluate(config, run_dir)
        logging.info(
            "quickstart %d/%d: %s %s in %s",
            n,
            len(configs),
            label,
            result.status,
            progress.format_duration(time.time() - t0),
        )
        row = {
            "task": label,
            "config": f"configs/{file}:{variant}",
            "steps": result.step,
            "status": result.status,
            "wall_time_s": round(time.time() - t0, 1),
        }
        missing = [k for k in headline if k not in result.eval_results]
        if missing:
            raise KeyError(
                f"quickstart: {label} did not report {missing}; it reported "
                f"{sorted(result.eval_results)}"
            )
        row["results"] = ", ".join(f"{k} {float(result.eval_results[k]):.4f}" for k in headline)
        rows.append(row)
        runs.append(
            {
                "label": label,
                "task": config.task,
                "config": row["config"],
                "workdir": run_dir,
                "eval_results": result.eval_results,
            }
        )
    write_table(rows, workdir)
    import jax  # pylint: disable=import-outside-toplevel

    if jax.process_index() == 0:
        from jaxface import report  # pylint: disable=import-outside-toplevel

        out = report.write_html_report(
            os.path.join(workdir, "report.html"),
            runs,
            title="jaxface quickstart",
            summary_rows=rows,
            command=f"jaxface quickstart --workdir {workdir}",
        )
        print(f"report: {out}")
    logging.info(
        "quickstart: %d task(s) in %s (%s)",
        len(rows),
        progress.format_duration(time.time() - t_all),
        "; ".join(f"{r['task']} {progress.format_duration(r['wall_time_s'])}" for r in rows),
    )
    return rows


def markdown_table(rows: list[dict]) -> str:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def write_table(rows: list[dict], workdir: str):
    table = markdown_table(rows)
    # Printed without the config column (results.md has it): rows stay under 200 characters.
    printed = markdown_table([{k: v for k, v in r.items() if k != "config"} for r in rows])
    print("\njaxface quickstart results (configs in results.md)\n" + printed + "\n")
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("# jaxface quickstart results\n\n" + table + "\n")
