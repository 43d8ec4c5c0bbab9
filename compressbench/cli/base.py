"""How every CLI command turns failures into messages and exit codes (shared by cli.py and
cli/report.py):

- a UsageError (bad config, bad option, bad input) prints the *subcommand's* usage line and the
  message, exit 2;
- a path the user gave that cannot be used (permission denied, read-only, a file where a folder
  should be, ...) is a usage error too, naming the path;
- any other CompressbenchError, or a disk that fails (full, I/O error), prints ``Error: ...``, exit 1;
- Ctrl-C (SIGINT) prints what was kept and how to continue, exit 130 (128 + SIGINT, the shell's
  convention). Every file a run writes is atomic or append-only, so an interrupted run resumes.
"""

from __future__ import annotations

import errno

import click

from compressbench.core.errors import CompressbenchError, UsageError

#: OSError codes that mean "this path cannot be used" (the user's to fix), not a failing disk.
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP}
EXIT_INTERRUPTED = 130


class Command(click.Command):
    """A click command with compressbench's error handling (see the module docstring)."""

    def invoke(self, ctx: click.Context):  # noqa: D401
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(str(exc), ctx=ctx) from None
        except CompressbenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except OSError as exc:
            where = exc.filename if exc.filename is not None else "a file"
            what = exc.strerror or str(exc)
            if exc.errno in _PATH_ERRNOS:
                raise click.UsageError(f"cannot access {where}: {what}; check the path (output goes to a folder "
                                       "you can write to: choose another --runs-dir or --out)", ctx=ctx) from None
            click.echo(f"Error: writing {where} failed: {what}. Everything written before is intact; "
                       "fix the disk (free space) and rerun the same command to continue", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("\nInterrupted. Everything written so far is kept (records are append-only, other "
                       "files atomic); rerun the same command to continue where it stopped.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
