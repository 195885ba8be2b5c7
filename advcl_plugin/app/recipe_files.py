"""Recipe files: reading small YAML safely (size, alias bombs, tags), OmegaConf structured validation with one
message per problem, and the recipes and studies shipped with the package.

Examples:
    >>> from advcl_plugin.app.recipe_files import available_studies, recipe_path
    >>> "study/cpu" in available_studies(), recipe_path("demo").name
    (True, 'demo.yaml')
"""

from __future__ import annotations

import dataclasses
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from advcl_plugin.core.config import parse_number

__all__ = [
    "MAX_RECIPE_BYTES",
    "MAX_YAML_NODES",
    "available_recipes",
    "available_studies",
    "flat_keys",
    "load_structured",
    "read_yaml",
    "recipe_path",
]

_OMEGACONF_TYPES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def _fractions(node: Any) -> Any:
    """``"8/255"`` -> 0.0313... everywhere in a YAML tree (:func:`~advcl_plugin.core.config.parse_number`;
    OmegaConf itself reads ``5e-4`` as a float)."""
    if isinstance(node, dict):
        return {k: _fractions(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fractions(v) for v in node]
    if isinstance(node, str) and "/" in node:
        return parse_number(node)
    return node


def flat_keys(tree: dict[str, Any], prefix: str = "", leaves: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; empty mappings and the keys named in ``leaves`` stay whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in leaves:
            flat |= flat_keys(value, f"{name}.", leaves)
        else:
            flat[name] = value
    return flat


#: recipes are small: a file larger than this, or one whose aliases expand to more YAML nodes, is refused
MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


def _check_yaml_size(text: str, where: str) -> None:
    """Refuse YAML whose aliases expand beyond :data:`MAX_YAML_NODES` nodes (an "alias bomb": a few hundred
    bytes that expand to millions of nodes and exhaust memory or crash the parser), before it is loaded."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise ValueError(f"{where} is larger than {MAX_RECIPE_BYTES // 1024} KiB; recipes are small YAML files")
    if "*" not in text:  # no alias: the nodes are the text's own
        return
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # a syntax error: the loader names it
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be a recipe") from None
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ValueError(f"{where} holds a recursive YAML alias (a value that contains itself)")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += expanded(child)
            if total > MAX_YAML_NODES:
                raise ValueError(
                    f"{where}: its YAML aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?); "
                    "recipes are small, write the values out"
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    if root is not None:
        try:
            expanded(root)
        except RecursionError:
            raise ValueError(f"{where} is nested too deeply to be a recipe") from None


def _dotlist(overrides: list[str], where: str) -> dict[str, Any]:
    import yaml

    for assignment in overrides:
        if "=" not in assignment:
            raise ValueError(f"override {assignment!r} must look like key.sub=value")
        _check_yaml_size(assignment.partition("=")[2], f"the override {assignment[:80]!r}")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        message = str(error).splitlines()[0]
        if isinstance(error, yaml.constructor.ConstructorError):
            message = "a value with a YAML tag (!!python/... and the like) is refused: values are plain data"
        raise ValueError(f"{where}: cannot read the overrides {overrides}: {message}") from None


def load_structured(
    schema: type,
    tree: dict[str, Any],
    overrides: list[str] | None = None,
    where: str = "recipe",
    between: list[dict[str, Any]] | None = None,
) -> Any:
    """Validate ``tree`` (+ the ``between`` layers, + dotted ``overrides``) against the dataclass ``schema``
    with OmegaConf and return the dataclass instance; every problem becomes one ``ValueError`` naming the key."""
    layers = [_fractions(tree), *(between or []), _fractions(_dotlist(overrides or [], where))]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *layers)
        return OmegaConf.to_object(merged)
    except (ConfigKeyError, ConfigAttributeError) as error:
        full_key = str(getattr(error, "full_key", "") or "")
        parent = full_key.rpartition(".")[0]
        owner = getattr(error, "object_type", None)
        valid = sorted(f.name for f in dataclasses.fields(owner)) if dataclasses.is_dataclass(owner) else []
        key = getattr(error, "key", None) or full_key.rpartition(".")[2]
        raise ValueError(
            f"unknown key(s) [{str(key)!r}] in {where}{'.' + parent if parent else ''}; valid keys: {valid}"
        ) from None
    except ValidationError as error:
        message = str(error).splitlines()[0]
        kind = re.search(r"could not be converted to (\w+)", message)
        value = re.search(r"Value '(.*)' of type", message)
        full_key = getattr(error, "full_key", "")
        if kind and kind.group(1) in _OMEGACONF_TYPES:
            got = f", got {value.group(1)!r}" if value else ""
            raise ValueError(f"{where}.{full_key} must be {_OMEGACONF_TYPES[kind.group(1)]}{got}") from None
        raise ValueError(f"{where}.{full_key}: {message}") from None
    except OmegaConfBaseException as error:
        raise ValueError(f"{where}: {str(error).splitlines()[0]}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A recipe or study file as a plain tree (refused with one message if it is not small, valid YAML)."""
    import io

    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise ValueError(f"{path} is larger than {MAX_RECIPE_BYTES // 1024} KiB; recipes are small YAML files")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text (UTF-8) YAML file: {error}") from None
    _check_yaml_size(text, str(path))
    try:
        tree = OmegaConf.to_container(OmegaConf.load(io.StringIO(text)))
    except OmegaConfBaseException as error:
        raise ValueError(f"{path} is not a valid YAML mapping: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a recipe") from None
    except Exception as error:  # a YAML syntax error
        raise ValueError(f"{path} is not a valid YAML file: {error}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ValueError(f"{path} must hold a mapping of recipe sections, got {type(tree).__name__}")
    return {str(key): value for key, value in tree.items()}


def _shipped(folder: str = "") -> list[str]:
    root = resources.files("advcl_plugin.recipes")
    node = root.joinpath(folder) if folder else root
    if not node.is_dir():
        return []
    prefix = f"{folder}/" if folder else ""
    return sorted(prefix + c.name[: -len(".yaml")] for c in node.iterdir() if c.name.endswith(".yaml"))


def available_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``demo``, ``cifar10``, ``study_base_cpu`` ...)."""
    return _shipped()


def available_studies() -> list[str]:
    """Names of the shipped studies (``study/cpu``, ``study/demo`` ...), which list arms for ``advcl study``."""
    return _shipped("study")


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe or study file: an existing path, or the name of a shipped one (``demo``, ``study/cpu`` ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = resources.files("advcl_plugin.recipes").joinpath(f"{name_or_path}.yaml")
    if shipped.is_file():
        return Path(str(shipped))
    raise FileNotFoundError(
        f"recipe {str(name_or_path)!r} not found; shipped recipes: {available_recipes()}, "
        f"studies: {available_studies()}"
    )
