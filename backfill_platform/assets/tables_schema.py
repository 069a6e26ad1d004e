"""Declared schemas of the project's tables (the source and destination share one)."""


from typing import Any

POSITION_DATE = "position_date"

# column -> Spark SQL type; the destination keeps exactly these, in this order.
POSITION_COLUMNS: dict[str, str] = {
    "position_date": "date",
    "id": "bigint",
    "value": "double",
    "category": "string",
}


def position_struct() -> Any:
    from pyspark.sql.types import StructType

    return StructType.fromDDL(", ".join(f"{name} {kind}" for name, kind in POSITION_COLUMNS.items()))
