"""What every command line of the pack shares: a user's mistake becomes one sentence and exit status 2.

    if __name__ == "__main__":
        run_cli(main)

``run_cli`` runs ``main``; a mistake the user can fix (``UserError``, a file that is not what it should be
(``FileFormatError``), a missing file, or a ``ValueError`` raised by one of this project's own checks)
is printed as ``error: <sentence>`` on stderr and the process exits with status 2, with no traceback;
``--debug`` re-raises it, traceback and all. Anything else (a bug) keeps Python's traceback.

``Parser`` is an ``argparse.ArgumentParser`` that knows ``--debug`` and reports its own errors (unknown
flag, a value its ``type=`` refuses) as the same single line. The ``type=`` validators below check a
value in the flag's own unit, before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UserError(ValueError):
    """A mistake in what the user asked for; its message is one sentence that says how to fix it (a
    ValueError, so library callers that catch ValueError see it too)."""


def _file_errors():
    from .safefile import FileFormatError
    return (UserError, FileFormatError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError)


def _raised_by_project(exc: BaseException) -> bool:
    """True when the innermost frame that raised ``exc`` is this project's code (not torch's, numpy's...)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    return path.startswith(PROJECT + os.sep) and os.sep + "site-packages" + os.sep not in path


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, _file_errors()):
        return True
    return type(exc) is ValueError and _raised_by_project(exc)


def one_line(exc: BaseException) -> str:
    """The exception's message as one line (an OSError without a message of its own names its file)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def run_cli(main, argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; user errors become ``error: <sentence>`` on stderr and exit status 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args[:args.index("--")] if "--" in args else "--debug" in args
    try:
        main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        if debug or not is_user_error(e):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with ``--debug`` whose errors are one line: ``error: <sentence>``, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="show the full traceback of an error instead of one sentence")

    def error(self, message: str):
        print(f"error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# ---- type= validators: each checks a value in the flag's own unit --------------------------------

def _number(kind, text: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(kind, what: str, ok, rule: str):
    """A ``type=`` validator: ``text`` read as ``kind`` (``what`` names it), refused unless ``ok(value)``."""
    def parse(text: str):
        value = _number(kind, text, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{value if kind is int else format(value, 'g')} {rule}")
        return value
    return parse


positive_int = _bounded(int, "a whole number", lambda v: v >= 1, "must be at least 1")
nonneg_int = _bounded(int, "a whole number", lambda v: v >= 0, "must be 0 or more")
positive_float = _bounded(float, "a number", lambda v: v > 0, "must be more than 0")
nonneg_float = _bounded(float, "a number", lambda v: v >= 0, "must be 0 or more")


def fraction_of(frames: int, what: str):
    """A budget given as a fraction of ``frames`` latent frames (``what`` names that window)."""
    def parse(text: str) -> float:
        value = _number(float, text, f"a fraction of the {what}")
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(
                f"{value:g} is not a fraction in (0, 1]: the budget is a fraction of the {what} "
                f"(0.25 keeps {0.25 * frames:g} of its {frames} frames)")
        return value
    parse.__name__ = "fraction"
    return parse


def list_of(item):
    """Comma-separated values, each checked by ``item``; at least one."""
    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("needs at least one comma-separated value")
        return [item(p) for p in parts]
    parse.__name__ = f"list of {getattr(item, '__name__', 'values')}"
    return parse


def one_of(choices, what: str = "value"):
    """A value from ``choices``, with the choices named in the error."""
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from {', '.join(choices)}")
        return text
    parse.__name__ = what
    return parse


def existing_file(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text


def existing_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return text


TORCH_DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(text: str) -> str:
    return one_of(TORCH_DTYPES, "dtype")(text)


def torch_device(text: str) -> str:
    """A device this machine has: ``cpu``, ``cuda``, ``cuda:N`` (or ``mps`` where there is one)."""
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:0, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device (torch {torch.__version__}); "
                                             "use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: there are only {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text}: this machine has no MPS device; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text}: unsupported device type; use cpu or cuda")
    return text


def _file_in_the_way(folder: str) -> str | None:
    """The existing file at ``folder`` or at its nearest existing parent, if that is not a folder."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return None if os.path.isdir(folder) else folder


def output_file(path: str, flag: str) -> None:
    """Refuse an output file that cannot be written: it is a folder, or a file stands where its folder would be."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name")
    blocker = _file_in_the_way(os.path.dirname(os.path.abspath(path)))
    if blocker:
        raise UserError(f"{flag} {path}: {blocker} is a file, not a folder")


def output_dir(path: str, flag: str) -> None:
    """Refuse an output folder that cannot be made: a file stands at it or at one of its parents."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a folder")
    blocker = _file_in_the_way(path)
    if blocker:
        raise UserError(f"{flag} {path}: {blocker} is a file, not a folder")
