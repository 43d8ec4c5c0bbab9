"""The command line. Each command parses its arguments, builds a config and calls one library
function; the library logs, the CLI prints. Usage errors exit with code 2.

Heavy modules are imported inside the commands, so ``compressbench --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

import click

from compressbench.cli.base import Command
from compressbench.cli.choices import RegistryChoice
from compressbench.core.errors import CompressbenchError
from compressbench.core.paths import PACKAGE_DIR
from compressbench.core.tables import format_summary_table
from compressbench.engine.executors import DEFAULT_EXECUTOR, EXECUTORS


class _Group(click.Group):
    """The command group; its commands handle errors as :mod:`compressbench.cli.base` says."""

    command_class = Command


class _ThirdPartyFilter(logging.Filter):
    """Lets compressbench's records through and other libraries' only from ``min_level`` up
    (some set their own loggers to DEBUG when imported, e.g. bm25s, so a logger level is not enough)."""

    def __init__(self, min_level: int) -> None:
        super().__init__()
        self.min_level = min_level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "compressbench" or record.name.startswith("compressbench.") \
            or record.levelno >= self.min_level


@click.group(cls=_Group)
@click.version_option(package_name="compressbench")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
    help="Logging level for library messages (printed to stderr). Other libraries' messages below "
         "warning (and transformers' loading bars below info) show only at debug.",
)
@click.option("-v", "--verbose", count=True,
              help="-v: --log-level info (also shows transformers' weight-loading bars); -vv: --log-level debug "
                   "(also other libraries' debug messages).")
def cli(log_level: str, verbose: int) -> None:
    """compressbench: which compressor/predictor LM pair to use, and why.

    Estimates the mutual information between contexts and their compressions from token
    log-probabilities (reported in bits, log base 2), measures downstream accuracy and cost.
    """
    level = getattr(logging, log_level.upper())
    if verbose:
        level = min(level, logging.INFO if verbose == 1 else logging.DEBUG)
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        if handler not in before:  # only the handler made here (not one a host program installed)
            handler.addFilter(_ThirdPartyFilter(logging.DEBUG if level <= logging.DEBUG else logging.WARNING))
    if level <= logging.WARNING:  # stage progress lines when stderr is not a terminal (CI, batch jobs)
        logging.getLogger("compressbench.core.progress").setLevel(min(level, logging.INFO))


def main() -> None:
    cli(prog_name="compressbench")


# ----------------------------------------------------------------------------- sweeps

#: The demo configs (``compressbench demo --task ...``), in configs/.
DEMO_TASKS = {"known_info": "demo.yaml", "longhealth": "demo_longhealth.yaml"}


def _print_run(result) -> None:

    click.echo(format_summary_table(result.rows))
    click.echo("")
    click.echo("MI in bits (log base 2); accuracy with 95% CI (an unparseable answer counts as wrong; "
               "unscored = how many); ceil = log2 N.")
    click.echo(f"Records written: {result.n_records_written} ({result.n_recomputed} recomputed because they "
               "had failed, or their example, prompt or model changed; the old ones are no longer reported).")
    click.echo(f"Run directory: {result.run_dir}")
    click.echo("  summary: summary.csv, summary.json   records: records.jsonl   "
               "config: config.yaml   manifest: manifest.json")


def _run(config, runs_dir: str) -> None:
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.engine.sweep import run_sweep

    _print_run(run_sweep(config, runs_dir, progress=True))


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder that holds one run directory per sweep name.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N examples of each dataset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value (YAML-parsed), e.g. --set samples=4 --set max_new_tokens.compressor=64.")
@click.option("--executor", type=RegistryChoice("compressbench.engine.executors:EXECUTORS"), default=None,
              help="Where model work runs: " + "; ".join(f"{k}: {EXECUTORS[k].help}" for k in EXECUTORS)
                   + f". Default: the config's executor key, else {DEFAULT_EXECUTOR}.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local one.")
def sweep(config_path: str, runs_dir: str, limit: int | None, overrides: tuple[str, ...], executor: str | None,
          ray_address: str | None) -> None:
    """Run (or resume) the sweep described by CONFIG into RUNS_DIR/<name>/."""
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.engine.config import load_config

    config = load_config(config_path, overrides, limit=limit)
    if executor is not None or ray_address is not None:
        spec = dict(config.executor)
        spec["kind"] = executor or ("ray" if ray_address else spec.get("kind", DEFAULT_EXECUTOR))
        if ray_address is not None:
            if not EXECUTORS[spec["kind"]].address:
                joins = " or ".join(f"--executor {k}" for k in EXECUTORS if EXECUTORS[k].address)
                raise click.UsageError(f"--ray-address needs {joins}")
            spec["address"] = ray_address
        elif not EXECUTORS[spec["kind"]].address:
            spec["address"] = None  # the config's cluster address is for the executor it named
        config = dataclasses.replace(config, executor=spec)
    _run(config, runs_dir)


@cli.command()
@click.option("--task", type=click.Choice(sorted(DEMO_TASKS)), default="known_info", show_default=True,
              help="known_info: the known-information task (the default demo); longhealth: the first demo, "
                   "LongHealth-like synthetic patient records.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N examples (default: all of the demo's dataset).")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the run directory (the config's name, with -limit<N> for a limit).")
def demo(task: str, limit: int | None, runs_dir: str) -> None:
    """Offline demo, ending with the run's Findings.

    known_info (default): 32 contexts of 4 known bits; compressors SmolLM2-135M-Instruct and
    Gemma-3-270M, the identity and empty baselines and the keep:1..3 oracle ladder; SmolLM2 scores
    MI and answers by likelihood. longhealth: SmolLM2 as compressor, predictor and scorer on
    synthetic patient records (configs/demo_longhealth.yaml)."""
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.engine.config import load_config
    from compressbench.analysis.findings import format_findings, run_findings
    from compressbench.engine.sweep import run_sweep

    path = PACKAGE_DIR / "configs" / DEMO_TASKS[task]
    base = load_config(path)
    name = base.name if limit is None else f"{base.name}-limit{limit}"
    result = run_sweep(load_config(path, [f"name={name}"], limit=limit), runs_dir, progress=True)
    _print_run(result)
    click.echo(format_findings(run_findings(result.run_dir)))


@cli.command()
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the run directory (<name>, or <name>-limit<N> with --limit).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N questions.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value (YAML-parsed), e.g. --set rounds=3.")
def research(config_path: str | None, runs_dir: str, limit: int | None, overrides: tuple[str, ...]) -> None:
    """Run the reference deep-research agent (compressed arms vs uncompressed) on a research
    benchmark, ending with its Findings. Without CONFIG: the built-in offline config (SmolLM2-135M
    predictor answering by likelihood over each question's options, SmolLM2-135M and Gemma-3-270M
    compressors, truncate/oracle/empty baselines, the entities planner, generated benchmark)."""
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.agent.research.config import load_research_config
    from compressbench.agent.research.report import build_rows, findings, format_table
    from compressbench.agent.research.run import run_research

    cfg = load_research_config(config_path, overrides, limit=limit)
    if limit is not None:
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}-limit{limit}")
    result = run_research(cfg, runs_dir, progress=True)
    manifest, rows = build_rows(result.run_dir)
    click.echo(format_table(manifest, rows))
    click.echo("Findings:")
    for line in findings(manifest, rows):
        click.echo(f"- {line}")
    click.echo(f"Run directory: {result.run_dir}  ({result.n_new_questions} question runs this time; cache "
               f"{result.cache_hits} hits, {result.cache_misses} misses; model loads: "
               f"{', '.join(f'{k} {v}' for k, v in result.model_loads.items()) or 'none'})")
    click.echo("  records.jsonl (round, answer and round_mi records), summary.json, summary.csv, manifest.json, cache/")
    if rows and all(r["n_errors"] == r["n"] for r in rows):
        raise CompressbenchError("every question ended with an error (see the 'error' field of the answer "
                                 f"records in {result.run_dir / 'records.jsonl'}); the records are kept")


# `report` (table/csv/json/markdown/html) and `plot` live in cli/report.py.
from compressbench.cli.report import register as _register_report  # noqa: E402  (report/plot commands)

_register_report(cli)

from compressbench.cli.route import register as _register_route  # noqa: E402  (the offline router)

_register_route(cli)


# ----------------------------------------------------------------------------- plan


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs to schedule over.")
@click.option("--gpu-type", default="H100-80GB", show_default=True,
              help="GPU type from the GPU table (configs/gpus.yaml): memory and dense BF16 peak FLOP/s.")
@click.option("--utilisation", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Model FLOPs utilisation for GPU-hours [default: 0.35].")
@click.option("--completion-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Generated tokens as a fraction of max_new_tokens (1 = upper bound).")
@click.option("--calibrate", type=click.Path(file_okay=False, exists=True), default=None,
              help="A finished pilot run: take expected generation and compression lengths from its records.")
@click.option("--examples-per-dataset", type=click.IntRange(min=1), default=None,
              help="Scale each dataset's counts to this many examples (plan a study from a sample).")
@click.option("--assume", "assume", multiple=True, metavar="DATASET=N:TOKENS",
              help="Plan N stand-in examples of TOKENS context tokens for a dataset not at hand.")
@click.option("--estimate-tokens", is_flag=True, help="Count tokens by characters, never loading a tokenizer.")
@click.option("--chars-per-token", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True,
              help="Characters per token where a model's tokenizer is not used.")
@click.option("--prices", "prices_path", type=click.Path(dir_okay=False), default=None,
              help="Price table YAML (default: configs/prices.yaml).")
@click.option("--gpu-table", type=click.Path(dir_okay=False), default=None,
              help="GPU table YAML (default: configs/gpus.yaml).")
@click.option("--usd-per-gpu-hour", type=click.FloatRange(min=0), default=None,
              help="Also price the GPU-hours at this rate.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N examples of each dataset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (as for sweep).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def plan(config_path: str, gpus: int, gpu_type: str, utilisation: float | None, completion_fraction: float,
         calibrate: str | None, assume: tuple[str, ...], examples_per_dataset: int | None, estimate_tokens: bool, chars_per_token: float, prices_path: str | None,
         gpu_table: str | None, usd_per_gpu_hour: float | None, limit: int | None, overrides: tuple[str, ...],
         fmt: str) -> None:
    """Count a sweep's work before running it: tokens, FLOPs, GPU-hours, API $ and a GPU schedule."""
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.engine.config import load_config
    from compressbench.analysis.plan import DEFAULT_UTILISATION, format_plan, make_plan, parse_assume

    config = load_config(config_path, overrides, limit=limit)
    if not estimate_tokens:  # loading tokenizers and counting every prompt takes a while: say so
        click.echo(f"plan: counting the tokens of every prompt with the tokenizers of "
                   f"{len(config.model_names_in_use())} model(s) (--estimate-tokens counts characters "
                   "instead, at once) ...", err=True)
    p = make_plan(config, n_gpus=gpus, gpu=gpu_type,
                  utilisation=utilisation or DEFAULT_UTILISATION, completion_fraction=completion_fraction,
                  use_tokenizers=not estimate_tokens, chars_per_token=chars_per_token,
                  examples_per_dataset=examples_per_dataset, prices_path=prices_path, gpu_table=gpu_table,
                  usd_per_gpu_hour=usd_per_gpu_hour, calibrate=calibrate, assume=parse_assume(assume))
    click.echo(json.dumps(p.to_dict(), indent=1) if fmt == "json" else format_plan(p))
