"""One round trip where Django's ORM takes two: ``UPDATE ... RETURNING`` and an
``INSERT`` that happens only while a query finds nothing.

Django's ``QuerySet.update()`` answers how many rows changed; code that then needs the
rows (a job's workflow once its outcome is written, a counter's new value) pays a second
query, and on a hot row holds its lock for that round trip too. ``update_returning``
compiles the same UPDATE with Django's own compiler (filters, ``F()`` and ``Now()``
expressions, JSON adaptation all as ``update()`` does them) and appends ``RETURNING``,
which PostgreSQL and SQLite (3.35 and later) both accept; the rows come back as model
instances, through Django's converters.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, transaction
from django.db.models import Model, QuerySet
from django.db.models.sql import UpdateQuery


def update_returning(queryset: QuerySet, fields: Sequence[str] | None = None,
                     **values: Any) -> list[Model]:
    """``queryset.update(**values)``, returning the rows it changed (after the change);
    with ``fields``, only those fields are read back (and the primary key), the others
    deferred: a row with a large column (a fan-in step's list of 10,000 dependencies)
    is then not sent back by every update of its counter."""
    model = queryset.model
    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(values)
    query.annotations = {}
    connection = connections[queryset.db]
    statement, params = query.get_compiler(queryset.db).as_sql()
    if not statement:  # nothing to set
        return []
    wanted = model._meta.concrete_fields if fields is None else [
        model._meta.pk, *(model._meta.get_field(name) for name in fields)]
    columns = ", ".join(dict.fromkeys(connection.ops.quote_name(field.column)
                                      for field in wanted))
    with transaction.mark_for_rollback_on_error(using=queryset.db):
        return list(model._base_manager.db_manager(queryset.db).raw(
            f"{statement} RETURNING {columns}", params))


def insert_unless(obj: Model, exists: QuerySet) -> bool:
    """Insert ``obj`` (as ``obj.save(force_insert=True)`` would) unless ``exists`` has a
    row when the statement runs: ``INSERT ... SELECT ... WHERE NOT EXISTS (...)``, one
    statement, so nothing can change between the check and the insert. False if it had
    (nothing inserted); an ``IntegrityError`` as ``save()`` would raise it."""
    model = type(obj)
    connection = connections[obj._state.db or "default"]
    fields = model._meta.concrete_fields
    values = [field.get_db_prep_save(field.pre_save(obj, True), connection=connection)
              for field in fields]
    if connection.vendor == "postgresql":
        # A bare parameter in a SELECT list has no column type to take: say it.
        slots = [f"CAST(%s AS {field.cast_db_type(connection)})" for field in fields]
    else:  # SQLite: values keep their own types
        slots = ["%s"] * len(fields)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    condition, params = exists.query.sql_with_params()
    statement = (f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({columns}) "
                 f"SELECT {', '.join(slots)} WHERE NOT EXISTS ({condition})")
    with transaction.mark_for_rollback_on_error(using=connection.alias):
        with connection.cursor() as cursor:
            cursor.execute(statement, [*values, *params])
            inserted = cursor.rowcount == 1
    if inserted:
        obj._state.adding, obj._state.db = False, connection.alias
    return inserted
