"""The ``edgedl`` command. Subcommands are imported only when invoked, so ``edgedl --help`` stays fast and
never imports torch. Each command module is thin: options -> a typed config -> one library call."""

from __future__ import annotations

import importlib
import os
import sys

import click

from edgedl import __version__
from edgedl.errors import EdgeDLError

# command name -> (module, attribute, one-line help). One table; the group dispatches through it.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("edgedl.cli.train", "train", "Train a recipe's model on its bundled data."),
    "export": ("edgedl.cli.export", "export", "Export a model to ONNX and prove it matches PyTorch."),
    "inspect": ("edgedl.cli.inspect", "inspect", "Show an ONNX model's inputs, outputs, ops and metadata."),
    "quantize": ("edgedl.cli.quantize", "quantize", "Quantize to int8/fp16 behind accuracy and speed gates."),
    "bench": ("edgedl.cli.bench", "bench", "Benchmark models on execution providers, honestly."),
    "optimize": ("edgedl.cli.optimize", "optimize",
                 "Search quantization and session settings for a device, under an accuracy budget."),
    "doctor": ("edgedl.cli.doctor", "doctor", "Check this machine: Python, CPU, onnxruntime, providers."),
    "serve": ("edgedl.cli.serve", "serve", "Serve models over the Open Inference Protocol v2 (Triton-compatible)."),
    "package": ("edgedl.cli.package", "package", "Bundle models for a device profile."),
    "deploy": ("edgedl.cli.deploy", "deploy", "Deploy a bundle to a device over SSH."),
    "fleet": ("edgedl.cli.fleet", "fleet", "Roll a bundle out to a fleet of devices with Ansible."),
    "debug": ("edgedl.cli.debug", "debug", "Find why a model is slow (or wrong): per operator, with advice."),
}


def _available(table: dict[str, tuple[str, str, str]]) -> list[str]:
    import importlib.util

    return [name for name, (module, _, _) in table.items() if importlib.util.find_spec(module) is not None]


class LazyGroup(click.Group):
    """A group whose commands come from a table of (module, attribute, help), imported only when invoked."""

    table: dict[str, tuple[str, str, str]] = COMMANDS

    def list_commands(self, ctx: click.Context) -> list[str]:
        return _available(self.table)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.table or name not in _available(self.table):
            return None
        module, attr, _ = self.table[name]
        return getattr(importlib.import_module(module), attr)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, _available(self.table), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            ctx.fail(f"No such command '{name}'.{hint}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        rows = [(name, self.table[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _debug_requested() -> bool:
    return "--debug" in sys.argv or os.environ.get("EDGEDL_DEBUG") == "1"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error(exc: OSError) -> str:
    """What the system said, the path it said it about, and what to do - for an OSError no check caught first."""
    import errno

    what = exc.strerror or exc.__class__.__name__
    paths = " -> ".join(repr(str(p)) for p in (exc.filename, exc.filename2) if p is not None)
    fix = {errno.ENOSPC: "free disk space or write elsewhere", errno.EDQUOT: "free disk space or write elsewhere",
           errno.EROFS: "choose a path on a writable file system", errno.EACCES: "choose a path you may write (or read)",
           errno.EPERM: "choose a path you may write (or read)", errno.EISDIR: "give a file path, not a directory",
           errno.ENOTDIR: "a file stands where a directory must be; choose another path",
           errno.ENOENT: "check the path", errno.EMFILE: "raise the open-file limit (ulimit -n)"}.get(exc.errno, "")
    return _one_line(f"{what}{': ' + paths if paths else ''}{'; ' + fix if fix else ''}")


class EdgeDLCLI(LazyGroup):
    def main(self, *args, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except EdgeDLError as exc:
            self._traceback()
            from edgedl.cli._errors import describe

            click.echo(f"error: {_one_line(describe(exc))}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # a bad option or argument: one line too, with where to look
            where = (exc.ctx.command_path if exc.ctx is not None else "edgedl").replace("deploy push", "deploy BUNDLE")
            click.echo(f"error: {_one_line(exc.format_message())} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except MemoryError:
            self._traceback()
            click.echo("error: out of memory: the sizes asked for need more memory than this machine can give; use "
                       "smaller values (batch, sizes, limits)", err=True)
            sys.exit(1)
        except OSError as exc:  # the environment refused (disk full, read-only, permissions): not a bug of ours
            self._traceback()
            click.echo(f"error: {_os_error(exc)}", err=True)
            sys.exit(1)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    @staticmethod
    def _traceback() -> None:
        if _debug_requested():
            import traceback

            traceback.print_exc()


@click.group(cls=EdgeDLCLI, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edgedl")
def main() -> None:
    """edgedl: take a PyTorch model to an edge device - export, prove, quantize, bench, package, deploy, serve."""


def debug_option(f):
    """--debug on every command: show tracebacks and the exporter's own output."""
    return click.option("--debug", is_flag=True, help="Show tracebacks and third-party output.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report on stdout.")(f)


def emit_json(data) -> None:
    import json

    click.echo(json.dumps(data, indent=2, default=str))
