"""Sphinx extension: a cross-reference to a re-exported name links to the entry of the module that defines it.

The Reference part documents every object once, where it is defined (``netmoments.relu.relu_moments``), but the
docstrings and type hints name objects as users import them: ``netmoments.relu_moments``,
``netmoments.attacks.AttackOptions``, or a bare ``AttackResult`` inside a module that imports it. Those are the same
Python objects, so when Sphinx finds no entry under the written name, this extension imports the name in the
context of the reference (its module, then the package root) and links to the documented entry of the very same
object. A name that is not a netmoments object, or whose object has no entry, stays unresolved and the nitpicky
build reports it.
"""
from __future__ import annotations

import importlib

__all__ = ["import_dotted", "setup"]


def import_dotted(dotted: str):
    """The object named by a dotted path (``"pkg.module.Class.attr"``), importing modules as needed.

    Raises ``LookupError`` if no prefix of ``dotted`` is an importable module or an attribute is missing.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError as err:
            raise LookupError(dotted) from err
        return obj
    raise LookupError(dotted)


def _documented_objects(env) -> dict[int, str]:
    """``id(object) -> documented full name`` for every module-level entry of the Python domain."""
    cache = getattr(env, "_netmoments_documented", None)
    if cache is None:
        cache = {}
        for name, entry in env.get_domain("py").objects.items():
            if entry.objtype not in ("function", "class", "exception", "data") or entry.aliased:
                continue
            try:
                cache.setdefault(id(import_dotted(name)), name)
            except LookupError:
                continue
        env._netmoments_documented = cache
    return cache


def _candidates(target: str, module: str | None, cls: str | None) -> list[str]:
    """Where a written name may live: the class and module of the reference, their parent packages, the root."""
    if target.startswith("netmoments."):
        return [target]
    names = []
    if module and cls:
        names.append(f"{module}.{cls}.{target}")
    parts = (module or "netmoments").split(".")
    for cut in range(len(parts), 0, -1):
        names.append(".".join(parts[:cut] + [target]))
    return names


def _has_attribute(obj, name: str) -> bool:
    # a dataclass field without a default is no class attribute, but it is an attribute of every instance;
    # an attribute set in __init__ is found only through the reference's own class
    return hasattr(obj, name) or name in getattr(obj, "__dataclass_fields__", {})


def _resolve(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    documented = _documented_objects(env)
    domain = env.get_domain("py")
    for dotted in _candidates(target, node.get("py:module"), node.get("py:class")):
        head, *rest = dotted.split(".")
        parts = [head]
        # walk to the first object (not module) on the path: that object is what gets documented
        for i, part in enumerate(rest):
            parts.append(part)
            try:
                obj = import_dotted(".".join(parts))
            except LookupError:
                break
            if type(obj).__name__ == "module":
                continue
            home = documented.get(id(obj))
            if home is None:
                break
            tail = rest[i + 1:]
            found = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                        ".".join([home, *tail]), node, contnode)
            own_class = home.endswith(f".{node.get('py:class')}")
            if found is None and len(tail) == 1 and node["reftype"] in ("attr", "meth") \
                    and (own_class or _has_attribute(obj, tail[0])):
                # an attribute without an entry of its own (a dataclass field, say): link to its class
                found = domain.resolve_xref(env, node["refdoc"], app.builder, "class", home, node, contnode)
            if found is not None:
                return found
            break
    return None


def setup(app):
    app.connect("missing-reference", _resolve)
    app.connect("env-updated", lambda app, env: env.__dict__.pop("_netmoments_documented", None))
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
