"""Job files for batch production: TOML (or YAML) read, validated and expanded into items.

    model = "stabilityai/stable-diffusion-xl-base-1.0"
    method = "FG_ONLY_ATTN"

    [defaults]                 # every item starts from these
    steps = 20
    size = "1024x1024"

    [matrix]                   # every combination becomes an item
    prompts = ["a glass cup", "a red apple"]
    seeds = [1, 2]

    [[items]]                  # and single items, overriding the defaults
    prompt = "a dog"
    fg = "fg.png"              # condition images: paths relative to the job file

    [qa]
    retry = 1                  # regenerate with the next seed when the alpha check fails
    trim = 8                   # crop to the alpha's bounding box plus 8 px

    [[decompose]]              # split an image into RGBA layers (Qwen-Image-Layered,
    image = "poster.png"       # `layers_model`, default Qwen/Qwen-Image-Layered)
    layers = 4

A job of decompose entries only needs no `model`.

An item without a seed gets one derived from its settings, so the same item always gives the
same image whatever the order or the subset run. Errors name the file, the line and the field.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..layers.options import DEFAULT_LAYERS, MAX_LAYERS, RESOLUTIONS
from ..layers.options import DEFAULT_MODEL as DEFAULT_LAYERS_MODEL

SETTINGS: dict[str, tuple[type, ...]] = {  # field -> accepted types
    "prompt": (str,), "negative_prompt": (str,), "method": (str,), "sampler": (str,),
    "steps": (int,), "cfg": (int, float), "seed": (int,), "width": (int,), "height": (int,), "size": (str,),
    "weight": (int, float), "stop_at": (int, float), "strength": (int, float),
    "fg": (str,), "bg": (str,), "blend": (str,), "init": (str,),
    "fg_prompt": (str,), "bg_prompt": (str,), "blend_prompt": (str,),
}
IMAGES = ("fg", "bg", "blend", "init")
MATRIX = {"prompts": "prompt", "seeds": "seed", "methods": "method", "sizes": "size"}
TOP = ("model", "method", "defaults", "matrix", "items", "qa", "decompose", "layers_model")
DECOMPOSE_SETTINGS: dict[str, tuple[type, ...]] = {
    "image": (str,), "layers": (int,), "prompt": (str,), "steps": (int,), "cfg": (int, float), "seed": (int,),
    "resolution": (int,)}
QA_FIELDS = {"retry": (int,), "trim": (int, bool), "checks": (list,)}
SEED_RANGE = 2 ** 31


class JobError(ValueError):
    """A job file that cannot be run; the message names the file, line and field."""


@dataclass(frozen=True)
class Item:
    """One output to make: its settings (seed always set) and a key that names it."""

    settings: dict
    key: str

    @property
    def decompose(self) -> bool:
        """An image to split into layers (a `[[decompose]]` entry), not one to generate."""
        return bool(self.settings.get("decompose"))

    @property
    def group(self) -> tuple:
        """Items that share a method and a size run one after another on one patched model."""
        if self.decompose:
            return "decompose", self.settings["resolution"], self.settings["layers"]
        return self.settings.get("method", ""), self.settings["width"], self.settings["height"]


@dataclass
class Job:
    path: Path
    model: str  # "" when the job only decomposes
    items: list[Item]
    layers_model: str = ""  # the decompose entries' model
    retry: int = 0
    trim: Optional[int] = None
    checks: tuple[str, ...] = ("empty", "opaque", "cut", "noise")


def load_job(path: "str | Path", text: Optional[str] = None, name: Optional[str] = None) -> Job:
    """Read, validate and expand a job file (.toml, or .yaml / .yml with PyYAML installed).

    `text` is the job when it does not come from `path` (which then only places relative
    image paths and gives the format); `name` is what messages call the file (default: its
    path), e.g. "the job file you pasted"."""
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise JobError(f"{path}: cannot read the job file ({exc.strerror or exc})") from None
    shown = name or str(path)
    data, line_of = _parse(path, text, shown)
    return _Validator(path, line_of, shown).job(data)


def _parse(path: Path, text: str, shown: str) -> tuple[dict, Callable[[tuple], Optional[int]]]:
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(shown, text)
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser from PyPI
        import tomli as tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"{shown}: not valid TOML: {exc}") from None
    return data, _toml_locator(text)


def _parse_yaml(shown: str, text: str) -> tuple[dict, Callable[[tuple], Optional[int]]]:
    try:
        import yaml
    except ImportError:
        raise JobError(f"{shown}: YAML job files need PyYAML (pip install pyyaml), or write the job as TOML") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobError(f"{shown}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise JobError(f"{shown}: a job file is a mapping of fields (model, defaults, matrix, items, qa)")
    lines: dict[tuple, int] = {}

    def walk(n, at: tuple) -> None:
        lines[at] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                lines[at + (k.value,)] = k.start_mark.line + 1
                walk(v, at + (k.value,))
                lines[at + (k.value,)] = k.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, at + (i,))

    walk(node, ())
    return data, lambda at: _nearest(lines, at)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def _toml_locator(text: str) -> Callable[[tuple], Optional[int]]:
    """Line numbers of TOML tables and `key =` lines, by field path (array tables indexed)."""
    lines: dict[tuple, int] = {}
    table: tuple = ()
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            name = header.group(2)
            if header.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                table = tuple(name.split(".")) + (counts[name],)
            else:
                table = tuple(name.split("."))
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault(table + (key.group(1),), number)
    return lambda at: _nearest(lines, at)


def _nearest(lines: dict[tuple, int], at: tuple) -> Optional[int]:
    """The line of `at`, or of the closest enclosing field that has one."""
    while at:
        if at in lines:
            return lines[at]
        at = at[:-1]
    return None


def _dotted(at: tuple) -> str:
    out = ""
    for part in at:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Validator:
    def __init__(self, path: Path, line_of: Callable[[tuple], Optional[int]], shown: str):
        self.path, self.line_of, self.shown = path, line_of, shown

    def error(self, at: tuple, message: str) -> JobError:
        line = self.line_of(at)
        where = self.shown + (f" line {line}" if line else "") + (f", {_dotted(at)}" if at else "")
        return JobError(f"{where}: {message}")

    def job(self, data: dict) -> Job:
        unknown = [k for k in data if k not in TOP]
        if unknown:
            raise self.error((unknown[0],), f"unknown field; a job file has {', '.join(TOP)}")
        generates = any(k in data for k in ("matrix", "items"))
        model = data.get("model", "" if not generates and "decompose" in data else None)
        if not isinstance(model, str) or generates and not model.strip():
            raise self.error(("model",) if "model" in data else (),
                             "`model` must name the model (a hub id, a diffusers folder or a .safetensors file)")
        defaults = self.settings(self.table(data, "defaults"), ("defaults",))
        if "method" in data:
            defaults = {"method": self.typed(data["method"], ("method",), (str,)), **defaults}
        items = [(settings, ("matrix",)) for settings in self.matrix(self.table(data, "matrix"), defaults)]
        listed = data.get("items", [])
        if not isinstance(listed, list):
            raise self.error(("items",), "`items` is a list of tables ([[items]] in TOML)")
        for i, entry in enumerate(listed):
            if not isinstance(entry, dict):
                raise self.error(("items", i), "each item is a table of settings (prompt, seed, size, ...)")
            items.append(({**defaults, **self.settings(entry, ("items", i))}, ("items", i)))
        layers_model = self.typed(data.get("layers_model", DEFAULT_LAYERS_MODEL), ("layers_model",), (str,)).strip()
        splits = self.decompositions(data.get("decompose", []), layers_model)
        if not items and not splits:
            raise self.error((), "no items: give [matrix] prompts, [[items]] entries or [[decompose]] images")
        qa = self.qa(self.table(data, "qa"))
        done = [self.item(settings, model, at) for settings, at in items] + splits
        keys = [it.key for it in done]
        if len(set(keys)) != len(keys):
            twice = next(k for k in keys if keys.count(k) > 1)
            raise self.error((), f"two items have the same settings (item {twice}); give them different seeds")
        return Job(self.path, model.strip(), done, layers_model, **qa)

    def decompositions(self, listed: Any, model: str) -> list[Item]:
        """The `[[decompose]]` entries as items: an image, its layer count and the model's settings."""
        if not isinstance(listed, list):
            raise self.error(("decompose",), "`decompose` is a list of tables ([[decompose]] in TOML)")
        out = []
        for i, entry in enumerate(listed):
            at = ("decompose", i)
            if not isinstance(entry, dict) or "image" not in entry:
                raise self.error(at, "each [[decompose]] entry needs `image` (a path relative to the job file)")
            settings: dict[str, Any] = {"decompose": True, "layers": DEFAULT_LAYERS, "resolution": RESOLUTIONS[0]}
            for key, value in entry.items():
                if key not in DECOMPOSE_SETTINGS:
                    raise self.error(at + (key,), f"unknown setting; [[decompose]] has {', '.join(DECOMPOSE_SETTINGS)}")
                settings[key] = self.typed(value, at + (key,), DECOMPOSE_SETTINGS[key])
            image = (self.path.parent / settings["image"]).resolve()
            if not image.is_file():
                raise self.error(at + ("image",), f"no such image file: {image}")
            settings["image"] = str(image)
            if not 1 <= settings["layers"] <= MAX_LAYERS:
                raise self.error(at + ("layers",), f"must be 1 .. {MAX_LAYERS} (got {settings['layers']})")
            if settings["resolution"] not in RESOLUTIONS:
                raise self.error(at + ("resolution",), f"must be one of {', '.join(map(str, RESOLUTIONS))} "
                                                       f"(got {settings['resolution']})")
            if settings.get("steps", 1) < 1:
                raise self.error(at + ("steps",), f"must be at least 1 (got {settings['steps']})")
            if not 0 <= settings.get("seed", 0) < SEED_RANGE:
                raise self.error(at + ("seed",), f"must be in 0 .. {SEED_RANGE - 1} (got {settings['seed']})")
            if "seed" not in settings:
                settings["seed"] = int(_digest(model, settings)[:8], 16) % SEED_RANGE
            out.append(Item(settings, _digest(model, settings)[:12]))
        return out

    def table(self, data: dict, name: str) -> dict:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.error((name,), f"`{name}` must be a table ([{name}] in TOML)")
        return value

    def typed(self, value: Any, at: tuple, types: tuple[type, ...]) -> Any:
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join({int: "an integer", float: "a number", str: "text", bool: "true/false",
                                 list: "a list"}[t] for t in types)
            raise self.error(at, f"must be {names} (got {json.dumps(value, default=str)})")
        return value

    def settings(self, table: dict, at: tuple) -> dict:
        out = {}
        for key, value in table.items():
            if key not in SETTINGS:
                close = difflib.get_close_matches(key.lower(), SETTINGS, n=1, cutoff=0.75)
                hint = f"; did you mean `{close[0]}`?" if close else f"; settings are {', '.join(SETTINGS)}"
                raise self.error(at + (key,), "unknown setting" + hint)
            out[key] = self.typed(value, at + (key,), SETTINGS[key])
        if "size" in out:
            out.update(self.size(out.pop("size"), at + ("size",)))
        for key in ("width", "height"):
            if key in out and (out[key] < 64 or out[key] % 8):
                raise self.error(at + (key,), f"must be a multiple of 8 from 64 (got {out[key]})")
        if out.get("steps", 1) < 1:
            raise self.error(at + ("steps",), f"must be at least 1 (got {out['steps']})")
        if not 0 <= out.get("seed", 0) < SEED_RANGE:
            raise self.error(at + ("seed",), f"must be in 0 .. {SEED_RANGE - 1} (got {out['seed']})")
        for key in ("stop_at", "strength"):
            if not 0.0 <= out.get(key, 0.0) <= 1.0:
                raise self.error(at + (key,), f"must be between 0 and 1 (got {out[key]})")
        for key in IMAGES:
            if key in out:
                image = (self.path.parent / out[key]).resolve()
                if not image.is_file():
                    raise self.error(at + (key,), f"no such image file: {image}")
                out[key] = str(image)
        return out

    def size(self, text: str, at: tuple) -> dict:
        match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
        if not match:
            raise self.error(at, f"a size is WIDTHxHEIGHT, e.g. \"1024x1024\" (got {text!r})")
        return {"width": int(match.group(1)), "height": int(match.group(2))}

    def matrix(self, table: dict, defaults: dict) -> list[dict]:
        axes = []
        for key, values in table.items():
            if key not in MATRIX:
                raise self.error(("matrix", key), f"unknown matrix axis; axes are {', '.join(MATRIX)}")
            if not isinstance(values, list) or not values:
                raise self.error(("matrix", key), f"`{key}` must be a non-empty list")
            setting = MATRIX[key]
            axes.append([self.settings({setting: v}, ("matrix", key)) for v in values])
        if not axes:
            return []
        if "prompts" not in table and "prompt" not in defaults:
            raise self.error(("matrix",), "no prompt: give [matrix] prompts or a prompt in [defaults]")
        return [{k: v for part in ({**defaults},) + combo for k, v in part.items()} for combo in itertools.product(*axes)]

    def qa(self, table: dict) -> dict:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key not in QA_FIELDS:
                raise self.error(("qa", key), f"unknown field; [qa] has {', '.join(QA_FIELDS)}")
            self.typed(value, ("qa", key), QA_FIELDS[key])
        if "retry" in table:
            if not 0 <= table["retry"] <= 10:
                raise self.error(("qa", "retry"), f"must be 0 .. 10 (got {table['retry']})")
            out["retry"] = table["retry"]
        trim = table.get("trim", False)
        if trim is not False:
            trim = 0 if trim is True else trim
            if trim < 0:
                raise self.error(("qa", "trim"), f"padding must be 0 or more pixels (got {trim})")
            out["trim"] = trim
        if "checks" in table:
            from .qa import CHECKS

            bad = [c for c in table["checks"] if c not in CHECKS]
            if bad:
                raise self.error(("qa", "checks"), f"unknown check {bad[0]!r}; checks are {', '.join(CHECKS)}")
            out["checks"] = tuple(table["checks"])
        return out

    def item(self, settings: dict, model: str, at: tuple) -> Item:
        if not settings.get("prompt") and not settings.get("init"):
            raise self.error(at, "no prompt: every item needs one (in the item, [defaults] or [matrix] prompts)")
        settings = dict(settings)
        settings.setdefault("width", 0)
        settings.setdefault("height", 0)
        if "seed" not in settings:
            settings["seed"] = int(_digest(model, settings)[:8], 16) % SEED_RANGE
        return Item(settings, _digest(model, settings)[:12])


def _digest(model: str, settings: dict) -> str:
    canonical = json.dumps({"model": model, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
