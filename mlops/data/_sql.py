"""`source: sql`: the rows of a query or a table, from any database SQLAlchemy reaches; DuckDB is built in.

YAML::

    data:
      source: sql
      url: duckdb:///recipes/data/warehouse.duckdb     # the default: duckdb:///data/warehouse.duckdb
      query: SELECT * FROM customers JOIN usage USING (customer_id)
      target: churned
      numeric: [tenure_months]

    # Postgres: the password comes from the environment, never the recipe
      url: postgresql://app:${oc.env:PGPASSWORD}@db.internal:5432/shop
      table: analytics.churn_features

    # Parquet or CSV files through DuckDB (relative paths are relative to the project)
      url: duckdb:///:memory:
      query: SELECT * FROM read_parquet('data/events/*.parquet')

How it reads: a `duckdb://` URL goes through DuckDB's own API (`duckdb.connect(path, read_only=True)`, then
`.execute(sql).df()`): it hands pandas whole columns instead of SQLAlchemy's row tuples (several times faster on
large results), the read-only connection can neither write nor lock out a writer's other readers, and relative
file paths in the query resolve against the project (`file_search_path`). Every other URL goes through a
SQLAlchemy engine and `pandas.read_sql`, inside a transaction that is rolled back, so a read commits nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.data._source import DataSource, missing_columns

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import URL

Problem = tuple[str, str, str]
# Optional dialects: the extra of this package that installs each (pyproject [project.optional-dependencies]).
EXTRAS = {"snowflake": "pip install 'mlops[snowflake]'  (snowflake-sqlalchemy)"}
# Network drivers that wait forever on a silent host by default; the check at config load must not.
CONNECT_TIMEOUT = {"psycopg2": "connect_timeout", "psycopg": "connect_timeout"}


class SqlSource(DataSource):
    """Reads `data.query` or `data.table` at `data.url` (see the module docstring for the YAML)."""

    # -------------------------------------------------------------- where
    def url(self, project: Path) -> URL:
        """The configured URL, a relative DuckDB file made absolute under `project` (no password in it)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.config.url)  # type: ignore[attr-defined]
        if url.get_backend_name() == "duckdb":
            url = url.set(database=self._duckdb_path(url.database, project))
        return url

    @staticmethod
    def _duckdb_path(database: str | None, project: Path) -> str:
        if not database or database == ":memory:" or database.startswith("md:") or "://" in database:
            return database or ":memory:"  # in memory, MotherDuck, or a URL DuckDB opens itself
        path = Path(database).expanduser()
        return str(path if path.is_absolute() else project / path)

    def _with_password(self, url: URL) -> URL:
        var = self.config.password_env  # type: ignore[attr-defined]
        if var is None:
            return url
        if var not in os.environ:
            raise _PasswordUnset(var)
        return url.set(password=os.environ[var])

    # -------------------------------------------------------------- what
    def _select(self, nrows: int | None) -> Any:
        """The SELECT as a SQLAlchemy statement, compiled by each dialect (LIMIT, TOP, FETCH FIRST...)."""
        from sqlalchemy import literal_column, select, table, text

        if self.config.table is not None:  # type: ignore[attr-defined]
            schema, _, name = self.config.table.rpartition(".")  # type: ignore[attr-defined]
            source: Any = table(name, schema=schema or None)
        else:
            source = text(_strip(self.config.query)).columns().subquery("_q")  # type: ignore[attr-defined]
        stmt = select(literal_column("*")).select_from(source)
        return stmt if nrows is None else stmt.limit(nrows)

    def _duckdb_sql(self, nrows: int | None) -> str:
        if self.config.table is not None:  # type: ignore[attr-defined]
            # DuckDB matches quoted names case-insensitively, so quoting only protects odd characters.
            sql = "SELECT * FROM " + ".".join('"' + p.replace('"', '""') + '"'
                                              for p in self.config.table.split("."))  # type: ignore[attr-defined]
        else:
            sql = _strip(self.config.query)  # type: ignore[attr-defined]
        return sql if nrows is None else f"SELECT * FROM ({sql}) AS _q LIMIT {int(nrows)}"

    # -------------------------------------------------------------- read
    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        url = self.url(project)
        if url.get_backend_name() == "duckdb":
            con = _duckdb_connect(url, project)
            try:
                return con.execute(self._duckdb_sql(nrows)).df()
            finally:
                con.close()
        import pandas as pd

        engine = _engine(self._with_password(url))
        try:
            with engine.connect() as conn:  # never committed: rolled back on close
                return pd.read_sql(self._select(nrows), conn)
        finally:
            engine.dispose()

    def read_after(self, project: Path, column: str, after: Any) -> pd.DataFrame:
        """The rows whose `column` is above `after`, filtered by the database (a WHERE on the query or table), with
        the watermark as a bound parameter, never spliced into the SQL text."""
        if after is None:
            return self.read(project)
        url = self.url(project)
        if url.get_backend_name() == "duckdb":
            quoted = '"' + column.replace('"', '""') + '"'
            con = _duckdb_connect(url, project)
            try:
                return con.execute(f"SELECT * FROM ({self._duckdb_sql(None)}) AS _q WHERE {quoted} > ?",
                                   [after]).df()
            finally:
                con.close()
        import pandas as pd
        from sqlalchemy import bindparam, literal_column, select
        from sqlalchemy import column as sql_column

        sub = self._select(None).subquery("_w")
        query = select(literal_column("*")).select_from(sub).where(sql_column(column) > bindparam("after", after))
        engine = _engine(self._with_password(url))
        try:
            with engine.connect() as conn:  # never committed: rolled back on close
                return pd.read_sql(query, conn)
        finally:
            engine.dispose()

    def check(self, project: Path, cache_dir: Path | None = None) -> list[Problem]:
        """Read-only: the dialect and driver load, the database is there and answers, the query or table
        reads, and it has the recipe's columns. Each failure is one problem naming its key."""
        url = self.url(project)
        shown = url.render_as_string(hide_password=True)
        var = self.config.password_env  # type: ignore[attr-defined]
        unset = None
        if var and var not in os.environ:
            unset = ("data.password_env", f"the environment variable {var} is not set",
                     f"export {var}=<the database password> before running mlops")
        found = [p for p in (_dialect_problem(url), unset) if p is not None]
        if found:
            return found
        backend = url.get_backend_name()
        if backend == "duckdb" and url.database not in (":memory:",) and not url.database.startswith("md:") \
                and not Path(url.database).is_file():
            return [("data.url", f"database file not found: {url.database}",
                     "a duckdb:/// path is relative to the project; create the database first, or query Parquet/CSV "
                     "files without one: url: duckdb:///:memory: with query: SELECT * FROM read_parquet('...')")]
        what = "data.table" if self.config.table is not None else "data.query"  # type: ignore[attr-defined]
        try:
            head = self._head(project, url)
        except _ConnectError as exc:
            return [("data.url", f"cannot connect to {shown}: {exc.message}",
                     "check the host, port and database name, that the server is running and reachable from here, "
                     "and the credentials in the environment")]
        except Exception as exc:  # the database's own error for the statement: show its first line
            message = _first_line(exc)
            if what == "data.table":
                return [(what, f"cannot read table {self.config.table!r}: {message}",  # type: ignore[attr-defined]
                         "check the name (schema.table) and that this user may read it")]
            return [(what, f"the query fails: {message}",
                     "run it in the database's own client to see the whole error, then fix data.query")]
        return missing_columns(self.config, [str(c) for c in head.columns])

    def _head(self, project: Path, url: URL) -> pd.DataFrame:
        """Five rows, with a failure to connect told apart from a failing statement."""
        if url.get_backend_name() == "duckdb":
            try:
                con = _duckdb_connect(url, project)
            except Exception as exc:  # a corrupt file, a lock, a bad option: the database is not reachable
                raise _ConnectError(_first_line(exc)) from exc
            try:
                return con.execute(self._duckdb_sql(5)).df()
            finally:
                con.close()
        import pandas as pd

        engine = _engine(self._with_password(url))
        try:
            try:
                conn = engine.connect()
            except Exception as exc:  # DBAPI OperationalError and kin: host, port, auth, missing file
                raise _ConnectError(_first_line(exc)) from exc
            with conn:  # rolled back on close
                return pd.read_sql(self._select(5), conn)
        finally:
            engine.dispose()


class _PasswordUnset(Exception):
    def __init__(self, var: str):
        super().__init__(f"the environment variable {var} (data.password_env) is not set: export it")
        self.var = var


class _ConnectError(Exception):
    def __init__(self, message: str):
        self.message = message


def _strip(query: str) -> str:
    """The query as a subquery can take it: without a trailing semicolon, and ending in a newline so that a
    `-- comment` on its last line doesn't swallow the `) AS _q LIMIT n` after it."""
    return query.strip().rstrip(";").strip() + "\n"


def _first_line(exc: BaseException) -> str:
    """The database's message: SQLAlchemy wraps the DBAPI error as `(module.Class) text [SQL: ...]`."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip() or type(inner).__name__
    return text.splitlines()[0]


def _dialect_problem(url: URL) -> Problem | None:
    """A missing dialect or DBAPI driver as a problem with the install line; None when both load."""
    from sqlalchemy.exc import NoSuchModuleError

    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        backend = url.get_backend_name()
        return ("data.url", f"no SQLAlchemy dialect for {url.drivername!r} is installed",
                EXTRAS.get(backend, f"install the SQLAlchemy dialect package for {backend}"))
    if url.get_backend_name() == "duckdb":
        return None  # read with duckdb itself, a dependency of mlops
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return ("data.url", f"the {url.drivername} driver is not installed: {_first_line(exc)}",
                f"pip install the driver, or name an installed one in the URL ({url.get_backend_name()}+<driver>://)")
    return None


def _engine(url: URL) -> Any:
    from sqlalchemy import create_engine

    arg = CONNECT_TIMEOUT.get(url.get_driver_name())
    connect_args = {arg: 10} if arg and arg not in url.query else {}
    return create_engine(url, connect_args=connect_args, poolclass=_null_pool())


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool  # one read per engine: no connection is kept open between reads


def _duckdb_connect(url: URL, project: Path) -> Any:
    """A DuckDB connection for reading: read-only on a file, relative paths in queries resolved against the project.
    The URL's query parameters are DuckDB settings (duckdb:///x.duckdb?threads=2)."""
    import duckdb

    database = url.database or ":memory:"
    read_only = database != ":memory:" and not database.startswith("md:")
    options = {k: v for k, v in url.query.items() if isinstance(v, str)}
    con = duckdb.connect(database, read_only=read_only, config=options)
    try:
        # read_parquet('data/x.parquet') in a query means the project's data/, wherever mlops runs.
        con.execute("SET file_search_path = " + _sql_string(str(project)))
    except BaseException:
        con.close()
        raise
    return con


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
