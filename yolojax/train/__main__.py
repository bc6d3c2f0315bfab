"""``python -m yolojax.train --config CONFIG --workdir DIR [--config.FIELD=VALUE ...]``.

``CONFIG`` is a config file or the name of one that ships with yolojax (``yolov8n``,
``quickstart``: :mod:`yolojax.config`). Any field may be overridden (ml_collections'
config_flags); an unknown or ill-typed one is refused in one line (exit 2), a value out of
its range before any work (exit 1, :mod:`yolojax.train.settings`). Argument parsing and one
call of :func:`yolojax.train.run.train`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

PROG = "yolojax.train"


def resolve_config_argument(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of ``--config`` (``--config X`` or ``--config=X``) made a file
    path (:func:`yolojax.config.config_path`: a shipped config's name -> its file), as
    config_flags opens it by path. Raises :class:`yolojax.console.ConfigError`."""
    from yolojax.config import config_path

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = str(config_path(out[i + 1]))
            break
        if arg.startswith("--config="):
            out[i] = f"--config={config_path(arg.split('=', 1)[1])}"
            break
    return out


def main(argv: Sequence[str] | None = None) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    from yolojax.console import ConfigError, configure_logging

    configure_logging()  # before the imports below (see yolojax.cli.run_train)
    from yolojax.train.outcome import (EXIT_ERROR, EXIT_USAGE, exit_status, final_status, interrupted_line,
                                       log_last_line, summary_line)
    from yolojax.train.run import NonFiniteLossError, TrainError, train

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "config file with get_config(), or a shipped config's name (yolov8n, quickstart, ...); "
        "override fields with --config.FIELD=VALUE", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory: metrics.jsonl, checkpoints/, results.png; re-run to resume")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(args: Sequence[str]) -> None:
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(args[1:])}")
        configure_logging()
        try:
            summary = train(config_flag.value, flags.FLAGS.workdir)
        except (ConfigError, NonFiniteLossError, TrainError) as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            sys.exit(final_status(EXIT_ERROR, getattr(e, "log_path", None)))
        except KeyboardInterrupt:
            print(f"{PROG}: {interrupted_line(flags.FLAGS.workdir)}", file=sys.stderr)
            sys.exit(final_status(130))
        print(summary_line(summary), file=sys.stderr)
        log_last_line(summary, summary_line(summary))
        sys.exit(exit_status(summary))

    def parse_flags(args: Sequence[str]) -> list[str]:
        # Unknown or ill-typed --config.FIELD overrides raise inside the config loader; turn
        # every flag problem into one line, before any work starts.
        try:
            return flags.FLAGS(resolve_config_argument(args))
        except (AttributeError, KeyError) as e:
            print(f"{PROG}: error: unknown config field {unknown_field_text(e)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except ConfigError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except (flags.Error, TypeError, ValueError) as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    app.run(run, argv=list(argv) if argv is not None else None, flags_parser=parse_flags)


def unknown_field_text(error: BaseException) -> str:
    """ml_collections' unknown-field error (an AttributeError around a KeyError) as one line:
    ``'epoch' (did you mean "epochs" instead of "epoch"?)``."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    lines = [line.strip() for line in text.strip().strip("'\"").splitlines() if line.strip()]
    name = lines[0].strip("'\"") if lines else type(error).__name__
    hint = next((line for line in lines[1:] if line.lower().startswith("did you mean")), None)
    return f"'{name}'" + (f" ({hint[0].lower()}{hint[1:]})" if hint else "")


if __name__ == "__main__":
    from yolojax.runtime import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()  # before the heavy imports, which a re-exec would repeat
    main()
