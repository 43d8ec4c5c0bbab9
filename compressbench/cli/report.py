"""CLI commands ``report`` and ``plot`` (added to the main group with :func:`register`).

``compressbench report RUN_DIR [--format table|csv|json|markdown|html]`` prints (or writes) the
run's report; ``compressbench plot RUN_DIR`` draws the figures as PNG and SVG. The library builds
everything (:mod:`compressbench.analysis.report`, :mod:`compressbench.analysis.plots`); these commands only parse
arguments and print. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from compressbench.cli.base import Command
from compressbench.cli.choices import RegistryChoice
from compressbench.core.errors import ConfigError, UsageError

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMbBtT]?)\s*$")
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_param_count(value: Any) -> float:
    """``1.5e9``, ``"1.5B"``, ``"135M"`` -> number of parameters."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ConfigError(f"cannot read parameter count {value!r}; write a number (1.5e9) or 1.5B / 135M")
    return float(m.group(1)) * _SCALE[m.group(2).lower()]


def load_meta(path: str | None) -> dict[str, dict[str, Any]]:
    """A model metadata override file: YAML ``{model name: {n_params: 1.5B, family: qwen2.5, ...}}``."""
    if path is None:
        return {}
    import yaml  # lazy: keeps `compressbench --help` from loading pyyaml (only --meta reads YAML here)

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read model metadata file {p}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{p} must map model names to mappings, e.g. "
                          "'qwen-1.5b: {n_params: 1.5B, family: qwen2.5}'")
    out: dict[str, dict[str, Any]] = {}
    for name, fields in data.items():
        fields = dict(fields)
        for key in ("n_params", "n_active_params"):
            if fields.get(key) is not None:
                fields[key] = int(parse_param_count(fields[key]))
        out[str(name)] = fields
    return out


def _common(f):
    f = click.option("--prices", "prices_path", type=click.Path(dir_okay=False), default=None,
                     help="Price table YAML (default: the packaged configs/prices.yaml, dated list prices).")(f)
    f = click.option("--meta", "meta_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML overriding model metadata: {name: {n_params: 1.5B, family: qwen2.5}}.")(f)
    f = click.option("--gpu-usd-per-hour", type=click.FloatRange(min=0), default=None,
                     help="Cost of local compute: dollars per GPU-hour (needs --gpu-flops-per-s).")(f)
    f = click.option("--gpu-flops-per-s", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Effective FLOP/s of that GPU, e.g. 4e14.")(f)
    return f


def _build(run_dir: str, prices_path: str | None, meta_path: str | None, gpu_usd_per_hour: float | None,
           gpu_flops_per_s: float | None, n_boot: int = 2000):
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.measure.cost import LocalRate
    from compressbench.analysis.report import build_report

    if (gpu_usd_per_hour is None) != (gpu_flops_per_s is None):
        raise UsageError("--gpu-usd-per-hour and --gpu-flops-per-s go together: give both or neither")
    rate = LocalRate(gpu_usd_per_hour, gpu_flops_per_s) if gpu_usd_per_hour is not None else None
    return build_report(run_dir, prices=prices_path, local_rate=rate, meta_overrides=load_meta(meta_path),
                        n_boot=n_boot)


@click.command("report", cls=Command)
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown", "html"]),
              default="table", show_default=True,
              help="csv: the full per-cell table; json: every table; html: one self-contained page with the plots.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write to this file instead of printing (html defaults to RUN_DIR/report.html).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples for the correlation CIs.")
@_common
def report_command(run_dir: str, fmt: str, out_path: str | None, n_boot: int, prices_path: str | None,
                   meta_path: str | None, gpu_usd_per_hour: float | None, gpu_flops_per_s: float | None) -> None:
    """Report a run: accuracy and MI (bits, log2) with 95% CIs, bits per token, compression tokens,
    FLOPs and $ per role, baselines as reference rows, rate-distortion fits, MI-accuracy
    correlations and Pareto fronts."""
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.analysis.report import render, write_report
    from compressbench.agent.research.report import is_research_run

    if is_research_run(run_dir):  # a `compressbench research` run: its own tables (research/report.py)
        # lazy: keeps `compressbench --help` fast (the engine imports scipy)
        from compressbench.agent.research.report import render as render_research

        text = render_research(run_dir, fmt)  # html: a UsageError naming the formats it has
        if out_path is None:
            click.echo(text, nl=False)
        else:
            Path(out_path).write_text(text, encoding="utf-8")
            click.echo(f"wrote {out_path}")
        return
    rep = _build(run_dir, prices_path, meta_path, gpu_usd_per_hour, gpu_flops_per_s, n_boot)
    if fmt == "html" and out_path is None:
        out_path = str(Path(run_dir) / "report.html")
    if out_path is None:
        click.echo(render(rep, fmt), nl=False)
    else:
        click.echo(f"wrote {write_report(rep, fmt, out_path)}")


class _PlotCommand(Command):
    """``plot``, whose help ends with every registered plot and what the run must have for it."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # lazy: the plot registries import the report and research modules (numpy, scipy)
        from compressbench.agent.research.report import RESEARCH_PLOTS
        from compressbench.analysis.plots import PLOTS

        for title, reg in (("Plots of a sweep run (each needs)", PLOTS),
                           ("Plots of a research run (each needs)", RESEARCH_PLOTS)):
            with formatter.section(title):
                formatter.write_dl([(name, reg[name].needs) for name in reg])


@click.command("plot", cls=_PlotCommand)
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the figures (default RUN_DIR/plots).")
@click.option("--format", "formats", type=click.Choice(["png", "svg"]), multiple=True,
              default=("png", "svg"), show_default=True, help="Image formats (repeatable).")
@click.option("--only", "names", multiple=True,
              type=RegistryChoice("compressbench.analysis.plots:PLOTS",
                                  "compressbench.agent.research.report:RESEARCH_PLOTS", what="plot"),
              help="Draw only these plots (repeatable): a sweep run's, or a research run's (research_*). "
                   "A plot the run cannot support is skipped with the reason.")
@_common
def plot_command(run_dir: str, out_dir: str | None, formats: tuple[str, ...], names: tuple[str, ...],
                 prices_path: str | None, meta_path: str | None, gpu_usd_per_hour: float | None,
                 gpu_flops_per_s: float | None) -> None:
    """Draw a run's figures (PNG and SVG); plots the run cannot support are skipped with the reason."""
    # lazy: keeps `compressbench --help` fast (the engine imports scipy)
    from compressbench.analysis.plots import plot_report
    from compressbench.agent.research.report import is_research_run

    if is_research_run(run_dir):  # research plots: accuracy and MI per round, accuracy vs API cost
        # lazy: keeps `compressbench --help` fast (the engine imports scipy)
        from compressbench.agent.research.report import plot_research

        for name, paths in plot_research(run_dir, out_dir, formats=formats, names=names or None).items():
            click.echo(f"{name}: " + ", ".join(str(p) for p in paths))
        return
    rep = _build(run_dir, prices_path, meta_path, gpu_usd_per_hour, gpu_flops_per_s)
    result = plot_report(rep, out_dir or Path(run_dir) / "plots", formats=formats, names=names or None)
    for name, paths in result.written.items():
        click.echo(f"{name}: " + ", ".join(str(p) for p in paths))
    for name, why in result.skipped.items():
        click.echo(f"{name}: skipped ({why})")


def register(group: click.Group) -> None:
    """Add ``report`` and ``plot`` to the CLI group."""
    group.add_command(report_command, "report")
    group.add_command(plot_command, "plot")
