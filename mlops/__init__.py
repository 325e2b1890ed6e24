"""mlops: Hydra recipes -> Prefect flows -> Lightning -> ONNX -> Triton, with monitoring and tracking."""

import sys

# jsonschema, which every process that imports Prefect imports, imports the optional `rfc3987_syntax` for its
# "iri"/"iri-reference" format checks, and that compiles a Lark grammar at import time: 1-4 s of every CLI,
# runner, flow-run and Prefect-server start on 2 cores (bench/README.md). No schema here uses those formats
# (the flows' parameters are pydantic models), so it is not imported: jsonschema then lacks those two checks,
# as it does wherever the package is not installed. A process that imported it already keeps it.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
