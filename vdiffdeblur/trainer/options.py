"""A training script's options from its config dataclass: ``--config FILE.yaml``, then ``--name value`` on top.

`config_cli(Config)` serves every trainer (stages 1 and 2, the VAE, DTB, MAML). One option per dataclass field,
its kind read from the field's annotation:

* ``int`` / ``float`` / ``str``: ``--name value``;
* ``bool``: ``--name true|false`` (yes/no, on/off, 1/0), or ``--name`` alone for true;
* ``X | None``: also ``--name none`` (or ``null``), which clears what the YAML set;
* ``tuple``: ``--name a b c`` (``tuple[float, float]``: exactly two values; a bare ``tuple`` takes its element
  kind from the default);
* a nested dataclass (MAML's ``meta: MetaConfig``): its fields are options of their own, at the YAML's top
  level or under the field's name (``meta: {inner_lr: 0.003}``).

YAML values are taken as YAML reads them; a string given to a number or boolean field is read as on the command
line. A YAML file may hold per-script sections (``stage1:`` / ``stage2:``), the script's own one applied on top.
A YAML file may name a base config, ``base: other.yaml`` (relative to its own folder; the base may name one in
turn, a cycle is an error): the options the base gives the script come first, then the file's own (top level,
then section) on top, key by key (``meta: {inner_lr: ...}`` changes that one option).
Unknown keys, in the YAML or on the command line, are a `ConfigError` naming them (with the closest known
name), so a typo never falls back to a default; every error is one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path

from ..argtypes import optional, parse_bool

__all__ = ["BASE_KEY", "ConfigCLI", "ConfigError", "build_config", "config_cli"]

#: the YAML key naming a config's base (never an option)
BASE_KEY = "base"


class ConfigError(ValueError):
    """A bad option (unknown name, wrong value, unreadable YAML); the scripts print it as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a one-line error the script prints, not argparse's usage + exit
        raise ConfigError(message)


@dataclasses.dataclass
class _Option:
    name: str
    kind: typing.Callable  # parses one command-line word
    base: type  # int, float, str, bool (of the value, or of a tuple's elements)
    nargs: typing.Any = None  # None, "+" or a count (tuples)
    default: typing.Any = None
    is_tuple: bool = False

    def coerce(self, value):
        """A YAML value as the field takes it: strings read as on the command line, lists as tuples."""
        if self.is_tuple and isinstance(value, (list, tuple)):
            return tuple(self._element(v) for v in value)
        if isinstance(value, str) and self.base is not str:
            return self.kind(value)
        return value

    def _element(self, v):
        if isinstance(v, str) and self.base is not str:
            return self.kind(v)
        if self.base is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)  # YAML reads 1 as an int; the field holds floats
        return v


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _describe(cls) -> tuple[dict[str, _Option], dict[str, tuple[type, list[str]]]]:
    """The options of ``cls`` by name, and its nested dataclass fields: name -> (class, their option names)."""
    hints = typing.get_type_hints(cls)
    options: dict[str, _Option] = {}
    nested: dict[str, tuple[type, list[str]]] = {}
    for f in dataclasses.fields(cls):
        hint, default = hints[f.name], _field_default(f)
        may_be_none = False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            may_be_none = len(args) < len(typing.get_args(hint))
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {hint}")
            hint = args[0]
        if dataclasses.is_dataclass(hint):
            inner, deeper = _describe(hint)
            if deeper:
                raise TypeError(f"{cls.__name__}.{f.name}: options nest one level only")
            clash = sorted(set(inner) & {g.name for g in dataclasses.fields(cls)})
            if clash:
                raise TypeError(f"{cls.__name__}.{f.name}: {', '.join(clash)} named twice")
            options.update(inner)
            nested[f.name] = (hint, list(inner))
            continue
        nargs, is_tuple = None, False
        if hint is tuple or typing.get_origin(hint) is tuple:
            args, is_tuple = typing.get_args(hint), True
            if args and args[-1] is not Ellipsis:
                base, nargs = args[0], len(args)
            else:
                base, nargs = (args[0] if args else type(default[0]) if default else str), "+"
        else:
            base = hint
        if base not in (int, float, str, bool):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {hint}")
        kind = parse_bool if base is bool else base
        if may_be_none:
            kind = optional(kind)
        options[f.name] = _Option(f.name, kind, base, nargs, default, is_tuple)
    return options, nested


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unknown(names, known, what: str, where: str, prefix: str = "") -> ConfigError:
    hints = []
    for n in names:
        close = difflib.get_close_matches(n, known, n=1)
        hints.append(f"{prefix}{n}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
    return ConfigError(f"unknown {what} option(s) {where}: {', '.join(hints)}")


def _flatten(options: dict, nested: dict, what: str, where: str) -> dict:
    """``options`` with each nested dataclass field's mapping (``meta: {...}``) merged into the top level."""
    options = dict(options)
    for name, (_, inner) in nested.items():
        sub = options.pop(name, None)
        if sub is None:
            continue
        if dataclasses.is_dataclass(sub):
            sub = dataclasses.asdict(sub)
        if not isinstance(sub, dict):
            raise ConfigError(f"{name} {where} must be a mapping of options, got {type(sub).__name__}")
        stray = sorted(set(sub) - set(inner))
        if stray:
            raise _unknown(stray, inner, what, f"{where} under {name}")
        twice = sorted(set(sub) & set(options))
        if twice:
            raise ConfigError(f"{', '.join(twice)} given both under {name} and on their own {where}")
        options.update(sub)
    return options


def build_config(cls, options: dict, what: str = "training"):
    """``cls`` from a flat mapping of options (a nested dataclass field's options at the top level, or as a
    mapping under the field's name); unknown names are a `ConfigError`."""
    specs, nested = _describe(cls)
    options = _flatten(options, nested, what, "given")
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise _unknown(unknown, list(specs), what, "given")
    values = {k: specs[k].coerce(v) if specs[k].is_tuple else v for k, v in options.items()}
    inner_names = {k for _, inner in nested.values() for k in inner}
    kwargs = {k: v for k, v in values.items() if k not in inner_names}
    for name, (sub_cls, inner) in nested.items():
        kwargs[name] = sub_cls(**{k: values[k] for k in inner if k in values})
    return cls(**kwargs)


class ConfigCLI:
    """The command line of one training script; see the module doc. ``parse(argv)`` -> the config."""

    def __init__(self, cls, *, description: str | None = None, what: str = "training", section: str | None = None,
                 sections: tuple = (), fixed: dict | None = None):
        self.cls, self.what = cls, what
        self.section, self.sections = section, tuple(sections) or ((section,) if section else ())
        self.fixed = dict(fixed or {})  # options the script sets itself: no flag, and a YAML must agree
        self.specs, self.nested = _describe(cls)
        if BASE_KEY in self.specs:
            raise TypeError(f"{cls.__name__}.{BASE_KEY}: the name is kept for a YAML config's base")
        self.parser = _Parser(description=description or (cls.__doc__ or "").strip().split("\n")[0],
                              allow_abbrev=False, argument_default=argparse.SUPPRESS)
        where = f" (top level + a {'/'.join(s + ':' for s in self.sections)} section)" if self.sections else ""
        self.parser.add_argument("--config", metavar="FILE.yaml",
                                 help=f"YAML file of options{where}; command-line options override it")
        for o in self.specs.values():
            if o.name in self.fixed:
                continue
            shown = (" ".join(map(str, o.default)) if o.is_tuple and o.default else repr(o.default)).replace("%", "%%")
            extra = dict(nargs="?", const=True) if o.base is bool else dict(nargs=o.nargs) if o.nargs else {}
            self.parser.add_argument(f"--{o.name}", type=o.kind, help=f"(default {shown})", **extra)

    def read_yaml(self, path, _chain: tuple = ()) -> dict:
        """The options a YAML file gives this script: its base's (``base: FILE.yaml``) if it names one, then its
        top level, then this script's section on top."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        seen = [p.resolve() for p in _chain]
        if path.resolve() in seen:
            loop = " -> ".join(str(p) for p in (*_chain[seen.index(path.resolve()):], path))
            raise ConfigError(f"{path}: its base configs form a cycle ({loop})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
        inherited = {}
        if BASE_KEY in data:
            base = data.pop(BASE_KEY)
            if not isinstance(base, str) or not base.strip():
                raise ConfigError(f"{path}: {BASE_KEY} must name a YAML file, got {base!r}")
            base_path = path.parent / base  # relative to the file, so a config works from any directory
            if not base_path.is_file():
                raise FileNotFoundError(f"{path}: base config {base} not found ({base_path})")
            inherited = self.read_yaml(base_path, (*_chain, path))
        options = {k: v for k, v in data.items() if k not in self.sections}
        section = data.get(self.section) if self.section else None
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{path}: {self.section} must be a mapping of options")
        options.update(section or {})
        options = _flatten(options, self.nested, self.what, f"in {path}")
        unknown = sorted(set(options) - set(self.specs))
        if unknown:
            raise _unknown(unknown, list(self.specs), self.what, f"in {path}")
        for key, value in self.fixed.items():
            if key in options and options[key] != value:
                raise ConfigError(f"{path} says {key} {options[key]} but this is the {key}-{value} script")
            options.pop(key, None)
        try:
            return {**inherited, **{k: self.specs[k].coerce(v) for k, v in options.items()}}
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{path}: {e}") from None

    def options(self, argv=None) -> dict:
        """The YAML's options (``--config``) with the command line's on top."""
        args, extra = self.parser.parse_known_args(argv)
        if extra:
            flags = [a.split("=", 1)[0] for a in extra if a.startswith("-") and not _is_number(a)]
            if flags:
                known = [k for k in self.specs if k not in self.fixed]
                raise _unknown([f.lstrip("-") for f in flags], known, self.what, "on the command line", prefix="--")
            raise ConfigError(f"unexpected argument(s): {' '.join(extra)}")
        given = vars(args)
        config = given.pop("config", None)
        options = self.read_yaml(config) if config else {}
        options.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
        return options

    def parse(self, argv=None):
        return build_config(self.cls, {**self.options(argv), **self.fixed}, self.what)


def config_cli(cls, **kwargs) -> ConfigCLI:
    """The command line of a training script whose options are the fields of the dataclass ``cls``.

    ``description``: the ``--help`` text (default: the class doc's first line); ``what``: the word in errors
    ("unknown <what> option(s)"); ``section``/``sections``: this script's YAML section and all the sections a
    shared file may hold; ``fixed``: options the script sets itself (stage 1 or 2)."""
    return ConfigCLI(cls, **kwargs)
