"""Settings declared once, by the part that owns them.

A part's settings are the fields of one dataclass, each made with :func:`setting`: the
gateway's in :class:`raygate.config.GatewayConfig`, each launcher's in the dataclass its
``settings`` class attribute names. ``raygate serve`` makes from each declaration one
command-line option (``--ssh-hosts``), one variable (``RAYGATE_SSH_HOSTS``) and one config
file key (``ssh_hosts``), all parsed by the setting's :class:`Kind`; precedence is option,
then variable, then config file, then the default.

A setting's name is its field's name, so it is the same everywhere: in the option (dashes
for underscores), the variable (upper case, ``RAYGATE_`` before it), the file and the code.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import click

from .resources import parse_memory

ENV_PREFIX = "RAYGATE_"
_KEY = "raygate.setting"


class Kind:
    """How a setting's text (an option, a variable) or config file value becomes its value.

    Each kind is a click parameter type, so options, variables and file values are parsed
    by one rule; ``text`` is how a default is shown in ``--help``.
    """

    def param_type(self) -> click.ParamType:
        raise NotImplementedError

    def text(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class Text(Kind):
    """Any string; ``path``: a file's path (``--help`` says FILE)."""

    path: bool = False

    def param_type(self) -> click.ParamType:
        return click.Path(dir_okay=False) if self.path else click.STRING


@dataclass(frozen=True)
class Integer(Kind):
    min: int | None = None
    max: int | None = None

    def param_type(self) -> click.ParamType:
        if self.min is None and self.max is None:
            return click.INT
        return click.IntRange(self.min, self.max)


@dataclass(frozen=True)
class Number(Kind):
    """A float; durations are seconds as numbers (``min_open``: the minimum is excluded)."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False

    def param_type(self) -> click.ParamType:
        if self.min is None and self.max is None:
            return click.FLOAT
        return click.FloatRange(self.min, self.max, min_open=self.min_open)


@dataclass(frozen=True)
class Flag(Kind):
    """A boolean: ``--name/--no-name``; variables and files say true/false, 1/0, yes/no."""

    def param_type(self) -> click.ParamType:
        return click.BOOL


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...]
    case_sensitive: bool = True

    def param_type(self) -> click.ParamType:
        return click.Choice(self.choices, case_sensitive=self.case_sensitive)


class _Parsed(click.ParamType):
    """A click type around a function that raises ValueError with a message for the user."""

    def __init__(self, name: str, parse: Callable[[Any], Any]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclass(frozen=True)
class Items(Kind):
    """A list of strings: a TOML list, or text separated by ``sep``. Blank items are dropped;
    ``strip``: items lose surrounding spaces."""

    sep: str = ","
    strip: bool = True

    def param_type(self) -> click.ParamType:
        return _Parsed("TEXT", self.parse)

    def parse(self, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, list | tuple):
            items = [str(item) for item in value]
        else:
            items = str(value).split(self.sep)
        if self.strip:
            items = [item.strip() for item in items]
        return [item for item in items if item.strip()]

    def text(self, value: Any) -> Any:
        return self.sep.join(value)


@dataclass(frozen=True)
class Size(Kind):
    """Bytes, from a size such as ``16Gi``, ``512M`` or a number; 0 or empty: none."""

    def param_type(self) -> click.ParamType:
        return _Parsed("SIZE", self.parse)

    @staticmethod
    def parse(value: Any) -> int:
        if str(value).strip() in ("", "0"):
            return 0
        return parse_memory(value)

    def text(self, value: Any) -> Any:
        return str(value)


@dataclass(frozen=True)
class Parsed(Kind):
    """A value parsed by the owner's function (text -> value, ValueError when bad);
    ``show``: the default as ``--help`` shows it."""

    parse: Callable[[Any], Any]
    show: str = ""
    metavar: str = "TEXT"

    def param_type(self) -> click.ParamType:
        return _Parsed(self.metavar, self.parse)

    def text(self, value: Any) -> Any:
        return self.show


@dataclass(frozen=True)
class Setting:
    """One setting, as :func:`setting` declared it; ``name`` is its field's name."""

    name: str
    default: Any
    help: str
    kind: Kind
    show_default: bool = True
    envvars: tuple[str, ...] = ()
    """Variables read after ``RAYGATE_<NAME>`` (e.g. Ray's own ``RAY_ADDRESS``)."""

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.name.upper()


@dataclass(frozen=True)
class _Declared:
    help: str
    kind: Kind
    show_default: bool
    envvars: tuple[str, ...]


def _infer_kind(default: Any) -> Kind:
    if isinstance(default, bool):
        return Flag()
    if isinstance(default, int):
        return Integer()
    if isinstance(default, float):
        return Number()
    if isinstance(default, str):
        return Text()
    if isinstance(default, list):
        return Items()
    raise TypeError(f"say the kind of a setting whose default is {default!r}")


def setting(
    default: Any,
    help: str,
    kind: Kind | None = None,
    *,
    show_default: bool = True,
    envvars: tuple[str, ...] = (),
) -> Any:
    """Declare a dataclass field as a setting (its default, its ``--help`` text, and the
    :class:`Kind` that parses it, by default inferred from the default's type)."""
    declared = _Declared(help, kind or _infer_kind(default), show_default, envvars)
    metadata = {_KEY: declared}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls: type) -> list[Setting]:
    """The settings a dataclass declares, in declaration order (inherited ones first).

    Fields made without :func:`setting` are internal: no option, variable or file key.
    """
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if spec is None:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"setting {cls.__name__}.{f.name} has no default")
        out.append(Setting(f.name, default, spec.help, spec.kind, spec.show_default, spec.envvars))
    return out


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of the settings dataclass ``cls`` from parsed ``values`` by name;
    settings missing from ``values`` keep their defaults."""
    names = {s.name for s in declared(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def merge(owners: Mapping[str, type]) -> Iterator[tuple[str, Setting]]:
    """Every setting of ``owners`` (who -> settings dataclass) once, with its first owner.

    A name two owners declare differently is an error: one of them would read the
    other's value. Owners that inherit a declaration (the remote launchers' report
    listener settings) share it.
    """
    seen: dict[str, tuple[str, Setting]] = {}
    for owner, cls in owners.items():
        for s in declared(cls):
            if s.name in seen:
                first, other = seen[s.name]
                if other != s:
                    raise ValueError(f"setting {s.name!r} is declared by both {first} and {owner}")
                continue
            seen[s.name] = (owner, s)
            yield owner, s
