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
