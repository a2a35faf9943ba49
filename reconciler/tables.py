"""The lookup table as every stage names it: ``TableDecl`` (a source file, its type and builder).

Pure, bottom layer. ``validate`` finds them in main.cf/master.cf (with the parameters that name
each and the key of its checked build), the state dir's inventory persists them (name, type,
builder), ``plan`` compares desired with managed ones, ``apply`` builds them, ``observed`` looks for
their built files. ``postfix.TableRef`` is the step before: a ``type:path`` in a parameter value,
not yet resolved to a managed file.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def built_suffixes(table_type: str) -> tuple[str, ...]:
    """Suffixes of the files postmap/postalias create beside a source of this type."""
    return {"hash": (".db",), "btree": (".db",), "lmdb": (".lmdb",), "cdb": (".cdb",)}.get(table_type, (".dir", ".pag"))


@dataclass(frozen=True)
class TableDecl:
    """A table the configuration names whose source is a managed file; equal by name, type, builder."""

    name: str  # relative to the config dir (``sql/x.cf``), or the absolute path of an outside table
    type: str  # hash, btree, cidr, ...
    builder: str  # "postmap", "postalias", or "" for tables Postfix reads as text
    # The parameters naming it (for a problem's line), and the key of the files the staged check
    # built from the very same bytes ("" if none): apply copies those instead of building again.
    parameters: tuple[str, ...] = field(default=(), compare=False)
    build_key: str = field(default="", compare=False)

    @property
    def built_suffixes(self) -> tuple[str, ...]:
        """Suffixes of the files postmap/postalias create beside the source."""
        return built_suffixes(self.type)
