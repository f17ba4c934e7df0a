"""A griffe extension for the docs build: the docstrings' Sphinx roles become checked links.

The package's docstrings use reST roles (:class:`Foo`, :meth:`~elevenconv.Conversation.x`).
mkdocstrings renders Markdown, so this resolves each role in the docstring's scope (as
Python would) and writes an autorefs cross-reference (``[`Foo`][elevenconv.Foo]``).
``mkdocs build --strict`` then fails on a role that names a public object which does not
exist. Roles that name builtins or private helpers (not on any page) stay code.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|exc|mod|data|obj|const):`(~?)([^`<>]+?)`")
PUBLIC_MODULES = ("elevenconv", "elevenconv.errors", "elevenconv.testing", "elevenconv.protocol")


def _private(path: str) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in path.split("."))


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrite reST roles in every docstring of the ``elevenconv`` package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "elevenconv":
            return
        # Canonical path of every documented (exported) object -> its public path.
        self.public: dict[str, str] = {}
        for mod_path in PUBLIC_MODULES:
            mod = pkg if mod_path == "elevenconv" else pkg[mod_path.split(".", 1)[1]]
            for name in mod.exports or ():
                name = name if isinstance(name, str) else name.name
                try:
                    target = mod[name]
                    canonical = target.final_target.path if target.is_alias else target.path
                except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                    continue
                self.public.setdefault(canonical, f"{mod_path}.{name}")
            self.public.setdefault(mod.path, mod_path)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = obj.docstring.value
                obj.docstring.value = ROLE.sub(lambda m, o=obj: self._link(o, m), text)

    def _resolve(self, obj: griffe.Object, target: str) -> str | None:
        if target.startswith("elevenconv"):
            return target
        head, _, rest = target.partition(".")
        scope: griffe.Object | None = obj
        while scope is not None:
            members = scope.all_members if scope.is_class else scope.members
            if head in members:
                member = members[head]
                path = member.path
                if member.is_alias:
                    try:
                        path = member.final_target.path
                    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                        path = member.target_path  # type: ignore[union-attr]
                return f"{path}.{rest}" if rest else path
            scope = scope.parent
        return None

    def _link(self, obj: griffe.Object, match: re.Match[str]) -> str:
        _role, tilde, target = match.groups()
        target = target.strip().removesuffix("()")
        shown = target.rsplit(".", 1)[-1] if tilde else target
        if target.split(".")[0] in vars(builtins):
            return f"`{shown}`"
        path = self._resolve(obj, target)
        if path is None:  # not a name in scope: a plain (public-looking) target
            return f"[`{shown}`][{target}]" if not _private(target) else f"`{shown}`"
        # Map canonical (private-module) paths onto the documented public ones.
        parts = path.split(".")
        for i in range(len(parts), 0, -1):
            public = self.public.get(".".join(parts[:i]))
            if public is not None:
                path = ".".join([public, *parts[i:]])
                break
        if _private(path) or not path.startswith("elevenconv"):
            return f"`{shown}`"  # a private helper or a third-party name: no page to link
        return f"[`{shown}`][{path}]"
