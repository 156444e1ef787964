"""Test-only emulation of Snowflake: ``fakesnow`` (Snowflake SQL on DuckDB) plus a shim over
its SQL transform for what it does not emulate.

fakesnow 0.12.1 parses ``VECTOR(FLOAT, n)`` but hands it to DuckDB unchanged (a parse error
there), and sqlglot turns ``VECTOR_COSINE_SIMILARITY`` into DuckDB's cosine *distance* (the
order reversed). The shim rewrites, after fakesnow's own transforms:

* the type ``VECTOR(<any>, n)`` to DuckDB's fixed-size ``FLOAT[n]`` (32-bit, like Snowflake's
  ``VECTOR(FLOAT, n)``),
* ``VECTOR_COSINE_SIMILARITY`` to ``ARRAY_COSINE_SIMILARITY`` and ``VECTOR_INNER_PRODUCT`` to
  ``ARRAY_INNER_PRODUCT``,
* ``CREATE TEMPORARY TABLE db.schema.t`` to a plain ``CREATE TABLE`` there: DuckDB keeps
  temporary tables in a catalog of their own and refuses a qualified name, which Snowflake
  accepts (the backend names its staging table in full). Each test's emulator is fresh and
  private, so a plain table stands in for a session's temporary one,

which makes the backend's vector SQL run and score exactly like NumPy. Nothing else changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import fakesnow
from fakesnow.cursor import FakeSnowflakeCursor
from sqlglot import exp

__all__ = ["emulated_snowflake"]

_original_transform = FakeSnowflakeCursor._transform


def _rewrite(node: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Create) and str(node.args.get("kind", "")).upper() == "TABLE":
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        props = node.args.get("properties")
        if isinstance(target, exp.Table) and target.args.get("catalog") and props is not None:
            for prop in list(props.expressions):
                if isinstance(prop, exp.TemporaryProperty):
                    prop.pop()
        return node
    if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.VECTOR:
        size = node.expressions[-1]
        dim = size.this.name if isinstance(size, exp.DataTypeParam) else size.name
        return exp.DataType.build(f"FLOAT[{int(dim)}]", dialect="duckdb")
    for kind, name in ((exp.CosineDistance, "ARRAY_COSINE_SIMILARITY"),
                       (exp.DotProduct, "ARRAY_INNER_PRODUCT")):
        if isinstance(node, kind):
            # transform() does not descend into a replacement: rewrite the arguments here.
            return exp.Anonymous(this=name, expressions=[node.this.transform(_rewrite),
                                                         node.expression.transform(_rewrite)])
    return node


def _transform(self: FakeSnowflakeCursor, expression: exp.Expr, params: Any) -> exp.Expr:
    result: exp.Expr = _original_transform(self, expression, params).transform(_rewrite)
    return result


@contextmanager
def emulated_snowflake() -> Iterator[None]:
    """``snowflake.connector.connect`` answers from a fresh in-memory emulator, vectors
    included, until the block ends."""
    with fakesnow.patch(), mock.patch.object(FakeSnowflakeCursor, "_transform", _transform):
        yield
