"""The command line. Each command parses its arguments, builds a config and calls one library
function; the library logs, the CLI prints. Usage errors exit with code 2.

Heavy modules are imported inside the commands, so ``compressbench --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys

import click

from compressbench.errors import CompressbenchError, UsageError


class _Group(click.Group):
    """Turns compressbench errors into clean messages: exit 2 for usage errors, 1 otherwise."""

    def invoke(self, ctx: click.Context):  # noqa: D401
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(str(exc), ctx=ctx) from None
        except CompressbenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="compressbench")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
    help="Logging level for library messages (printed to stderr).",
)
def cli(log_level: str) -> None:
    """compressbench: which compressor/predictor LM pair to use, and why.

    Estimates the mutual information between contexts and their compressions from token
    log-probabilities (reported in bits, log base 2), measures downstream accuracy and cost.
    """
    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="compressbench")


# ----------------------------------------------------------------------------- sweeps

#: The demo's default example limit (measured to fit 10 minutes on 2 CPU cores; see README).
DEMO_DEFAULT_LIMIT = 8


def _print_run(result) -> None:
    from compressbench.tables import format_summary_table

    click.echo(format_summary_table(result.rows))
    click.echo("")
    click.echo("MI in bits (log base 2); accuracy with 95% CI (an unparseable answer counts as wrong; "
               "unscored = how many); ceil = log2 N.")
    click.echo(f"Records written: {result.n_records_written} ({result.n_recomputed} recomputed because their "
               "example, prompt or model changed; the old ones are no longer reported).")
    click.echo(f"Run directory: {result.run_dir}")
    click.echo("  summary: summary.csv, summary.json   records: records.jsonl   "
               "config: config.yaml   manifest: manifest.json")


def _run(config, runs_dir: str) -> None:
    from compressbench.sweep import run_sweep

    _print_run(run_sweep(config, runs_dir, progress=True))


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder that holds one run directory per sweep name.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N examples of each dataset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value (YAML-parsed), e.g. --set samples=4 --set max_new_tokens.compressor=64.")
def sweep(config_path: str, runs_dir: str, limit: int | None, overrides: tuple[str, ...]) -> None:
    """Run (or resume) the sweep described by CONFIG into RUNS_DIR/<name>/."""
    from compressbench.config import load_config

    _run(load_config(config_path, overrides, limit=limit), runs_dir)


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=DEMO_DEFAULT_LIMIT, show_default=True,
              help="Examples of the synthetic dataset to use.")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the run directory (demo, or demo-limit<N> for a non-default limit).")
def demo(limit: int, runs_dir: str) -> None:
    """Offline demo: SmolLM2-135M-Instruct as compressor, predictor and scorer, plus the
    identity, empty and truncate baselines, on the built-in synthetic dataset."""
    from pathlib import Path

    from compressbench.config import load_config

    path = Path(__file__).resolve().parent / "configs" / "demo.yaml"
    name = "demo" if limit == DEMO_DEFAULT_LIMIT else f"demo-limit{limit}"
    _run(load_config(path, [f"name={name}"], limit=limit), runs_dir)


@cli.command()
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the run directory (<name>, or <name>-limit<N> with --limit).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N questions.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value (YAML-parsed), e.g. --set rounds=3.")
def research(config_path: str | None, runs_dir: str, limit: int | None, overrides: tuple[str, ...]) -> None:
    """Run the reference deep-research agent (compressed arms vs uncompressed) on a research
    benchmark. Without CONFIG: the built-in offline config (SmolLM2-135M, generated benchmark)."""
    from compressbench.research.config import load_research_config
    from compressbench.research.report import build_rows, format_table
    from compressbench.research.run import run_research

    cfg = load_research_config(config_path, overrides, limit=limit)
    if limit is not None:
        from dataclasses import replace

        cfg = replace(cfg, name=f"{cfg.name}-limit{limit}")
    result = run_research(cfg, runs_dir, progress=True)
    manifest, rows = build_rows(result.run_dir)
    click.echo(format_table(manifest, rows))
    click.echo(f"Run directory: {result.run_dir}  ({result.n_new_questions} question runs this time)")
    click.echo("  records.jsonl (round, answer and round_mi records), summary.json, summary.csv, manifest.json")
    if rows and all(r["n_errors"] == r["n"] for r in rows):
        raise CompressbenchError("every question ended with an error (see the 'error' field of the answer "
                                 f"records in {result.run_dir / 'records.jsonl'}); the records are kept")


# `report` (table/csv/json/markdown/html) and `plot` live in cli_report.py.
from compressbench.cli_report import register as _register_report  # noqa: E402  (report/plot commands)

_register_report(cli)
