"""Builds recipes/data/warehouse.duckdb, the small warehouse `recipes/warehouse.yaml` reads, from churn.csv.

    python recipes/data/make_warehouse.py

Two tables, as a warehouse would hold them: `customers` (who they are, what they signed) and `usage` (what they
did, and whether they left, and `updated_at`: when the row was last written, one hour apart in customer order),
joined by `customer_id` in the recipe's query. `recipes/warehouse_incremental.yaml` reads `updated_at` as its
watermark column. Small 16 KiB blocks keep the file
around 100 KB; storage version v1.0.0 keeps it readable by every DuckDB from 1.0 on.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
CSV, OUT = HERE / "churn.csv", HERE / "warehouse.duckdb"

CUSTOMERS = """
CREATE TABLE w.customers (customer_id VARCHAR PRIMARY KEY, tenure_months INTEGER, contract VARCHAR,
                          payment_method VARCHAR, region VARCHAR)"""
USAGE = """
CREATE TABLE w.usage (customer_id VARCHAR REFERENCES w.customers (customer_id), monthly_charges DOUBLE,
                      support_calls INTEGER, data_gb DOUBLE, churned VARCHAR, updated_at TIMESTAMP)"""


def main() -> None:
    tmp = OUT.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect()
    con.execute(f"ATTACH '{tmp}' AS w (BLOCK_SIZE 16384, STORAGE_VERSION 'v1.0.0')")
    # Every column as text first: `churned` is yes/no, which DuckDB's sniffer would turn into a boolean.
    con.execute(f"CREATE TEMP VIEW src AS SELECT * FROM read_csv('{CSV}', all_varchar = true)")
    con.execute(CUSTOMERS)
    con.execute(USAGE)
    con.execute("INSERT INTO w.customers SELECT customer_id, tenure_months, contract, payment_method, region "
                "FROM src ORDER BY customer_id")
    con.execute("INSERT INTO w.usage SELECT customer_id, monthly_charges, support_calls, data_gb, churned, "
                "TIMESTAMP '2024-01-01' + to_hours(CAST(row_number() OVER (ORDER BY customer_id) - 1 AS BIGINT)) "
                "FROM src ORDER BY customer_id")
    con.execute("DETACH w")
    con.close()
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
