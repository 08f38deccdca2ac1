"""What every `gcl-*` command shares: `key=value` options, logging, the progress switch,
exit codes, and argparse options whose defaults and choices come from a config dataclass.

Exit codes (one convention for gcl-train, gcl-eval and gcl-qdrant; the README lists it):

    0  done (or stopped on request, e.g. gcl-train --stop-after)
    1  the run failed: bad data, a missing or corrupt file, a runtime error; one line
       "<prog>: error: ..." on stderr names the problem
    2  the command line is wrong (argparse's own errors and invalid option values, found
       before any work starts)
    3  gcl-qdrant eval finished but the index is outside --tolerance of exact search
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TOLERANCE = 3

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def key_values(text: str, what: str, allowed: Optional[Iterable[str]] = None,
               positive_sum: bool = False, noun: str = "value", non_negative: bool = False) -> Dict[str, float]:
    """Parse "a=1,b=0.5" into {"a": 1.0, "b": 0.5}.

    Every value must be a finite number; a key given twice, an unknown key (when
    `allowed` is given) or an empty key is an error naming the option (`noun` names the
    values in messages: "weight", "parameter").

    Raises:
        ValueError (argparse turns it into a usage error when used as a `type=`).

    Example:
        >>> key_values("image=0.9,title=0.1", "--weights")
        {'image': 0.9, 'title': 0.1}
    """
    out: Dict[str, float] = {}
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected key=value pairs, got {text!r}")
    allowed = list(allowed) if allowed is not None else None
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what}: expected key=value pairs separated by commas "
                             f"(e.g. image=0.9,title=0.1), got {text!r}")
        if key in out:
            raise ValueError(f"{what}: {key!r} is given twice in {text!r}")
        if allowed is not None and key not in allowed:
            raise ValueError(f"{what}: unknown key {key!r}; expected keys from {allowed}")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"{what}: {key!r} has a non-numeric {noun} {value.strip()!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"{what}: {key!r} has a non-finite {noun} {value.strip()!r}")
        if non_negative and v < 0:
            raise ValueError(f"{what}: {key!r} has a negative {noun} {value.strip()!r}; expected values >= 0")
        out[key] = v
    if positive_sum and out and sum(out.values()) <= 0:
        raise ValueError(f"{what}: expected at least one positive value, got {text!r}")
    return out


def key_values_type(what: str, **kw) -> Callable[[str], Dict[str, float]]:
    """An argparse `type=` for `key_values` (errors become usage errors, exit 2)."""
    def parse(text: str) -> Dict[str, float]:
        try:
            return key_values(text, what, **kw)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "key=value list"
    return parse


def finite_float(text: str) -> float:
    """An argparse `type=` for a finite float (rejects nan and inf)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def int_at_least(low: int, also: Optional[int] = None, what: str = "") -> Callable[[str], int]:
    """An argparse `type=` for an int >= `low` (or equal to `also`, e.g. -1 for "all")."""
    want = what or (f"an int >= {low}" + (f" or {also}" if also is not None else ""))

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if v < low and v != also:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return v

    parse.__name__ = "int"
    return parse


positive_int = int_at_least(1, what="a positive int")


def documents_for_model(config, encoder, hint: str = ""):
    """The evaluation config for `encoder`'s model: a text-only model (a Hugging Face
    folder) is evaluated on titles alone, the documents it was trained on (said at INFO,
    with `hint`); any other encoder keeps `config`."""
    bundle = getattr(encoder, "bundle", None)
    if bundle is None or bundle.has_image_tower:
        return config
    from ..data import doc_field_specs

    logging.getLogger("gcl_train.cli").info("%s is text-only: documents are their titles%s", bundle.name,
                                            f" ({hint})" if hint else "")
    return dataclasses.replace(config, right=doc_field_specs(bundle.default_field_weights)).validate()


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """`--quiet` and its synonym `--no-progress`: no progress bars, warnings only."""
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bars and only warnings in the log")


def setup_logging(quiet: bool = False, level: Optional[int] = None) -> None:
    """One logging set-up for every command (INFO, or WARNING with --quiet)."""
    if level is None:
        level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT)


def fail(prog: str, error: BaseException, code: int = EXIT_ERROR) -> int:
    """Print "<prog>: error: <message>" on stderr and return the exit code."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return code


def field_default(config_cls: Any, name: str) -> Any:
    """The default of dataclass field `name` (calling a default_factory)."""
    f = {f.name: f for f in dataclasses.fields(config_cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{config_cls.__name__}.{name} has no default")


def format_default(value: Any) -> str:
    """How a default shows in --help: key=value lists as the user would type them."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    if value is None:
        return "none"
    return str(value)


class ConfigArguments:
    """Declare argparse options whose defaults (and choices) come from a config dataclass.

    The dataclass is the one place an option is declared; the CLI gives it a flag and a
    help text, and the help shows the dataclass default once ("(default: ...)").

    Example:
        >>> args = ConfigArguments(parser, TrainConfig)  # doctest: +SKIP
        >>> args.add(group, "--lr", "lr", type=float, help="AdamW learning rate")  # doctest: +SKIP
        >>> cfg = TrainConfig(**args.values(ns), data=..., out=...)  # doctest: +SKIP
    """

    def __init__(self, parser: argparse.ArgumentParser, config_cls: Any):
        self.parser = parser
        self.config_cls = config_cls
        self.fields: Dict[str, str] = {}  # argparse dest -> config field

    def add(self, group, flag: str, field: str, help: str, default: Any = dataclasses.MISSING,
            show_default: Optional[str] = None, **kw) -> argparse.Action:
        """Add `flag` for config field `field`; default and help text come from the config."""
        value = field_default(self.config_cls, field) if default is dataclasses.MISSING else default
        if kw.get("action") not in ("store_true", "store_false"):
            kw.setdefault("default", value)
        shown = show_default if show_default is not None else format_default(value)
        action = group.add_argument(flag, help=f"{help} (default: {shown})", **kw)
        self.fields[action.dest] = field
        return action

    def values(self, ns: argparse.Namespace) -> Dict[str, Any]:
        """{config field: parsed value} for every option declared with `add`."""
        return {field: getattr(ns, dest) for dest, field in self.fields.items()}


__all__ = [
    "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_TOLERANCE", "ConfigArguments", "add_progress_flags",
    "documents_for_model", "fail", "field_default", "finite_float", "format_default", "int_at_least",
    "key_values", "key_values_type", "positive_int", "setup_logging",
]
