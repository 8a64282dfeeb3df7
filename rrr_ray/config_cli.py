"""Command-line options generated from the fields of a pydantic config, so that each default and
help text is defined once, in the config.

A field is named by its path (``"epochs"``, or ``"lora.r"`` for a field of a nested config). Its
option is ``--field-name`` unless renamed, with the field's type, default and description:

- ``int``, ``float``, ``str``: one value; ``Literal[...]``: one of the choices;
- ``list[...]``: ``nargs="+"`` (``"*"`` when the default is empty);
- ``bool``: a switch, ``--name`` when the default is False, ``--no-name`` when it is True;
- ``Optional[bool]``: ``auto`` (None), ``yes`` or ``no``;
- ``Optional[str]``: an empty value stands for None.

A field with ``repr=False`` (a secret such as an API key) never shows its default in ``--help``.
Used by every job's command line (``jobs/``, ``rrr generate``).
"""

from __future__ import annotations

import argparse
import types
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

_TRISTATE: dict[str, bool | None] = {"auto": None, "yes": True, "no": False}
M = TypeVar("M", bound=BaseModel)


def add_config_options(parser: argparse.ArgumentParser, model: type[BaseModel], fields: Sequence[str],
                       flags: Mapping[str, str] | None = None, required: Sequence[str] = ()) -> None:
    """Add one option per field path of ``model`` to ``parser``; ``flags`` renames options
    (field path -> flag, e.g. ``{"learning_rate": "--lr"}``); ``required`` names fields whose
    option must be given although the config has a default."""
    for path in fields:
        info = _field_info(model, path)
        default = _default(model, path)
        flag = _flag(path, info, default, flags or {})
        kw = _argparse_kwargs(info, default, path in required)
        if "action" not in kw and "choices" not in kw:
            kw.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
        parser.add_argument(flag, dest=_dest(path), **kw)


def config_values(args: argparse.Namespace, model: type[BaseModel], fields: Sequence[str]) -> dict[str, Any]:
    """The parsed values of ``fields`` as a nested dict, ready for ``model.model_validate``; a nested
    config starts from its default in ``model``, so its fields without an option keep their values."""
    out: dict[str, Any] = {}
    for path in fields:
        *parents, leaf = path.split(".")
        node, owner = out, model
        for name in parents:
            if name not in node:
                default = owner.model_fields[name].get_default(call_default_factory=True)
                node[name] = default.model_dump() if isinstance(default, BaseModel) else {}
            node, owner = node[name], _nested(owner, name)
        node[leaf] = getattr(args, _dest(path))
    return out


class ConfigError(ValueError):
    """A value the config refuses, said in one line as the option it came from."""


def validate_config(model: type[M], values: dict[str, Any], flags: Mapping[str, str] | None = None) -> M:
    """``model.model_validate(values)``; a refused value raises ``ConfigError`` naming its option
    (``--lora-r: Input should be greater than or equal to 1``; ``flags`` as for
    ``add_config_options``), so that a job reports it in one line, without a traceback."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(x) for x in err["loc"])
        option = (flags or {}).get(path) or ("--" + str(err["loc"][-1]).replace("_", "-") if err["loc"] else "options")
        raise ConfigError(f"{option}: {err['msg']}") from None


def _nested(model: type[BaseModel], name: str) -> type[BaseModel]:
    nested = model.model_fields[name].annotation
    if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
        raise TypeError(f"{model.__name__}.{name} is not a nested config")
    return nested


def _field_info(model: type[BaseModel], path: str) -> FieldInfo:
    *parents, leaf = path.split(".")
    for name in parents:
        model = _nested(model, name)
    return model.model_fields[leaf]


def _default(model: type[BaseModel], path: str) -> Any:
    """The default of a field path: for a field of a nested config, its value in the nested
    config's default (which may differ from the nested class's own default)."""
    name, _, rest = path.partition(".")
    info = model.model_fields[name]
    if not rest:
        return None if info.is_required() else info.get_default(call_default_factory=True)
    if info.is_required():
        return _default(_nested(model, name), rest)
    value = info.get_default(call_default_factory=True)
    for part in rest.split("."):
        value = getattr(value, part)
    return value


def _dest(path: str) -> str:
    return path.replace(".", "__")


def _flag(path: str, info: FieldInfo, default: Any, renames: Mapping[str, str]) -> str:
    if path in renames:
        return renames[path]
    name = path.rsplit(".", 1)[-1].replace("_", "-")
    if info.annotation is bool and default is True:
        name = f"no-{name}"
    return f"--{name}"


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``(inner type, True)`` for ``Optional[inner]``, else ``(annotation, False)``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _tristate(text: str) -> bool | None:
    if text not in _TRISTATE:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(_TRISTATE)})")
    return _TRISTATE[text]


def _none_if_empty(text: str) -> str | None:
    return text or None


def _with_note(text: str, note: str) -> str:
    """``text`` with ``(note)`` before its final full stop."""
    if text.endswith("."):
        return f"{text[:-1]} ({note})."
    return f"{text} ({note})".lstrip()


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _argparse_kwargs(info: FieldInfo, default: Any, required: bool = False) -> dict[str, Any]:
    required = required or info.is_required()
    help_text = (info.description or "").replace("%", "%%")
    annotation, optional = _optional(info.annotation)
    kw: dict[str, Any] = {}
    if annotation is bool and not optional:
        kw["action"] = "store_false" if default else "store_true"
        if default:
            help_text = _with_note(help_text, "on by default; this flag turns it off")
        return kw | {"default": default, "help": help_text}
    if annotation is bool:
        kw |= {"type": _tristate, "metavar": "{" + ",".join(_TRISTATE) + "}"}
        default = next(k for k, v in _TRISTATE.items() if v is default)
    elif get_origin(annotation) is Literal:
        choices = list(get_args(annotation))
        kw |= {"choices": choices, "type": type(choices[0])}
    elif get_origin(annotation) is list:
        (item,) = get_args(annotation) or (str,)
        kw |= {"nargs": "+" if default or required else "*", "type": item}
    elif optional and annotation is str:
        kw["type"] = _none_if_empty
    else:
        kw["type"] = annotation
    if required:
        kw["required"] = True
    elif default not in (None, [], ()) and info.repr:
        help_text = _with_note(help_text, f"default: {_show(default)}".replace("%", "%%"))
    return kw | {"default": default, "help": help_text or None}
