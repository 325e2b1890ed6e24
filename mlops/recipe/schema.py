"""The validated configuration: what a composed recipe must look like.

Hydra composes ``conf/`` + ``stacks/`` + ``recipes/`` + overrides into one tree;
:func:`mlops.recipe.load` validates that tree once into :class:`Config`.
Every model here is frozen and forbids unknown keys, so a typo in a recipe
fails at load time with the file and line, not deep inside training.
Nothing downstream of the loader sees a DictConfig.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

SKLEARN_DATASETS = ("breast_cancer", "iris", "wine", "diabetes")
NAME_PATTERN = r"^[a-z][a-z0-9_\-]{0,62}$"
Port = Annotated[int, Field(ge=1, le=65535)]
# Upper bounds say what is allowed: a size, count or timeout past these is a typo (an extra digit, a unit
# mix-up), and would otherwise surface as an out-of-memory or a hang long after `mlops plan` said OK.
DAY_S = 86_400
Count = Annotated[int, Field(ge=1, le=1_000_000)]
BatchSize = Annotated[int, Field(ge=1, le=1_000_000)]
LayerSize = Annotated[int, Field(ge=1, le=65_536)]
TimeoutS = Annotated[float, Field(gt=0, le=DAY_S)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy and Lightning seeds are 32-bit unsigned


def _numeric(annotation: Any) -> bool:
    """Whether a field's type holds numbers anywhere (int, float, list[int], dict[str, float], X | None)."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in getattr(annotation, "__args__", ()) or ()) or (
        getattr(annotation, "__origin__", None) is Annotated and _numeric(annotation.__origin__))


@functools.cache
def _numeric_field(cls: type[BaseModel], name: str) -> bool:
    field = cls.model_fields.get(name)
    return field is not None and _numeric(field.annotation)


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_bool(v) for v in value)
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    return False


class _Strict(BaseModel):
    # allow_inf_nan=False: every float setting (nested ones in lists and dicts included) is finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `true` as 1 for an int or float field: `model.lr=true` would train at lr=1.0.
        if _has_bool(value) and _numeric_field(cls, info.field_name or ""):
            raise PydanticCustomError("number_bool", "input should be a number, not a boolean")
        return value


# ---------------------------------------------------------------- data
class SplitConfig(_Strict):
    """Seeded, deterministic train/val/test split."""

    val: float = Field(0.15, gt=0, lt=0.5, description="Fraction of rows held out for validation.")
    test: float = Field(0.15, gt=0, lt=0.5, description="Fraction of rows held out for the test metrics.")
    seed: Seed = Field(42, description="Seed of the split; the same seed and data give the same split.")
    stratify: bool = Field(True, description="Stratify on the target (classification only).")


class IncrementalConfig(_Strict):
    """`data.incremental`: which column orders the rows, so each ingest reads only what is new."""

    column: str = Field(min_length=1, description="A column that grows with every new or updated row "
                        "(an updated-at timestamp, or an increasing id); rows with a value above the last "
                        "snapshot's watermark are new.")


class WindowConfig(_Strict):
    """`data.window`: exactly one of `rows` and `days`."""

    rows: Annotated[int, Field(ge=1, le=10**10)] | None = Field(None, description="Train on the latest N rows of the snapshots.")
    days: float | None = Field(None, gt=0, le=36_500, description="Train on the rows whose data.incremental.column "
                               "is within D days of the newest (a timestamp column).")

    @model_validator(mode="after")
    def _one(self) -> WindowConfig:
        if (self.rows is None) == (self.days is None):
            raise ValueError("give exactly one of `rows` (the latest N rows) or `days` (the last D days)")
        return self


class ChecksConfig(_Strict):
    """What the validate step requires of every batch."""

    min_rows: Annotated[int, Field(ge=1, le=1_000_000_000)] = Field(
        50, description="Fewer rows than this fail validation.")
    max_null_fraction: float = Field(
        0.05, ge=0, le=1, description="Largest fraction of nulls allowed in any feature column."
    )
    non_finite: Literal["reject", "drop", "clip"] = Field(
        "reject", description="Rows with ±inf, or a value beyond float32's range (|x| > 3.4e38), in a numeric "
        "column (or a regression target): `reject` fails validation, `drop` drops those rows, `clip` replaces "
        "each value with its column's largest or smallest usable one. What was done is in the lineage."
    )


class DataConfig(_Strict):
    """What every data-source flavor shares: the columns the model uses, the split and the checks.

    A data-source flavor subclasses this with `source: Literal["<name>"]` and the keys that say where the
    rows come from (mlops/data/_source.py documents the interface its implementation provides).
    """

    source: str = Field(description="The data-source flavor: `sklearn` (a dataset bundled with scikit-learn), "
                        "`file` (a CSV or Parquet file), or an installed plugin's.")
    target: str = Field(description="The column to predict.")
    numeric: list[str] = Field(default_factory=list, description="Numeric feature columns (scaled, NaN-imputed).")
    categorical: list[str] = Field(
        default_factory=list, description="Categorical feature columns (one-hot; unseen values map to 'unknown')."
    )
    split: SplitConfig = SplitConfig()
    checks: ChecksConfig = ChecksConfig()
    incremental: IncrementalConfig | None = Field(
        None, description="Level 1+: read only the rows past the last snapshot's watermark (the largest value of "
        "`column` ingested so far), e.g. {column: updated_at}; each ingest is a snapshot of the new rows.")
    window: WindowConfig | None = Field(
        None, description="What training uses of the incremental snapshots: {rows: N} (the latest N rows) or "
        "{days: D} (the last D days of data.incremental.column); default: all of them. Needs data.incremental.")

    @model_validator(mode="after")
    def _coherent(self) -> DataConfig:
        if self.window is not None and self.incremental is None:
            raise ValueError("data.window selects over incremental snapshots and needs data.incremental: "
                             "{column: <an updated-at timestamp column>}")
        if not self.numeric and not self.categorical:
            raise ValueError("name at least one feature column under `numeric` or `categorical`")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"columns listed as both numeric and categorical: {both}")
        if self.target in self.numeric or self.target in self.categorical:
            raise ValueError(f"the target column {self.target!r} is also listed as a feature")
        for cols in (self.numeric, self.categorical):
            dupes = sorted({c for c in cols if cols.count(c) > 1})
            if dupes:
                raise ValueError(f"columns listed twice: {dupes}")
        return self

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def columns(self) -> list[str]:
        """The columns a snapshot keeps: the features and the target (and what a flavor adds, e.g. file names)."""
        return [*self.features, self.target]

    def describe(self) -> str:
        """Where the rows come from, for messages and run logs."""
        return self.source


class SklearnData(DataConfig):
    """A dataset bundled with scikit-learn: no download, no file."""

    source: Literal["sklearn"] = Field(description="`sklearn`: a dataset bundled with scikit-learn.")
    dataset: Literal["breast_cancer", "iris", "wine", "diabetes"] | None = Field(
        None, description="The scikit-learn dataset (source=sklearn)."
    )

    @model_validator(mode="after")
    def _has_dataset(self) -> SklearnData:
        if self.dataset is None:
            raise ValueError("source=sklearn needs `dataset` (one of: " + ", ".join(SKLEARN_DATASETS) + ")")
        if self.incremental is not None:
            raise ValueError("source=sklearn is a fixed bundled dataset: nothing is ever appended, so "
                             "data.incremental does not apply; use source=sql, parquet_dataset or file")
        return self

    def describe(self) -> str:
        return str(self.dataset)


class FileData(DataConfig):
    """One CSV or Parquet file, local or at any fsspec URL."""

    source: Literal["file"] = Field(description="`file`: a CSV or Parquet file.")
    path: str | None = Field(
        None,
        description="Local path (relative to the project) or any fsspec URL, e.g. s3://bucket/x.csv (source=file).",
    )
    format: Literal["auto", "csv", "parquet"] = Field("auto", description="File format; `auto` uses the suffix.")

    @model_validator(mode="after")
    def _has_path(self) -> FileData:
        if not self.path:
            raise ValueError("source=file needs `path`: a local path or an fsspec URL")
        return self

    def describe(self) -> str:
        return str(self.path)


class SqlData(DataConfig):
    """Rows from a SQL database, named by a SQLAlchemy URL: DuckDB embedded (the default), Postgres, Snowflake...

    The password never sits in the recipe: write `${oc.env:VAR}` in its place in the URL (kept out of the
    config: the URL is stored without it and `password_env` names VAR), or give `password_env` yourself.
    """

    source: Literal["sql"] = Field(description="`sql`: a query or a table of a SQL database.")
    url: str = Field(
        "duckdb:///data/warehouse.duckdb",
        description="SQLAlchemy URL. `duckdb:///<path>` is a DuckDB file (relative to the project; "
        "`duckdb:///:memory:` for queries over Parquet/CSV files); `postgresql://user@host:5432/db`; "
        "`snowflake://user@account/db/schema?warehouse=WH` (install `mlops[snowflake]`). A password goes in "
        "as `${oc.env:VAR}`, never as text.",
    )
    query: str | None = Field(None, description="A SELECT whose rows are the data (exactly one of query, table).")
    table: str | None = Field(None, description="A table or view, `name` or `schema.name` (exactly one of query, "
                              "table).")
    password_env: str | None = Field(
        None, description="The environment variable holding the database password (set for you when the URL "
        "has `${oc.env:VAR}` as its password).",
    )

    @model_validator(mode="before")
    @classmethod
    def _password_to_env(cls, data: Any) -> Any:
        """A URL password that is an environment variable's value came from `${oc.env:VAR}` (the config is
        validated after interpolation): store the URL without it and the variable's name, so the secret is never
        in the config, its dumps or the state directory. Any other password stays for `_no_literal_secret`."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        url = _parse_sql_url(data["url"])
        if url is None or not url.password or data.get("password_env"):
            return data
        import os

        names = sorted(k for k, v in os.environ.items() if v == url.password)
        if not names:
            return data
        # URL.set(password=None) means "unchanged"; the named tuple's _replace clears it.
        return {**data, "url": url._replace(password=None).render_as_string(hide_password=False),
                "password_env": names[0]}

    @field_validator("url")
    @classmethod
    def _no_literal_secret(cls, v: str) -> str:
        url = _parse_sql_url(v)
        if url is None:
            raise ValueError(f"{v!r} is not a SQLAlchemy URL: dialect[+driver]://[user@]host[:port]/database, "
                             "e.g. duckdb:///data/warehouse.duckdb or postgresql://app@db:5432/shop")
        if url.password:
            raise ValueError("the URL holds a literal password: credentials never go in the recipe; put it in an "
                             "environment variable and write the URL as "
                             f"{url.drivername}://{url.username}:${{oc.env:VAR}}@{url.host or ''}/..., "
                             "or leave it out of the URL and set data.password_env: VAR")
        secret = sorted(k for k in url.query if SECRET_KEY.search(k))
        if secret:
            raise ValueError(f"the URL holds a secret parameter ({', '.join(secret)}): leave it out and let the "
                             "driver read it from the environment (e.g. MOTHERDUCK_TOKEN)")
        return v

    @model_validator(mode="after")
    def _query_or_table(self) -> SqlData:
        if (self.query is None) == (self.table is None):
            raise ValueError("source=sql needs exactly one of `query` (a SELECT) or `table` (a table or view name)"
                             + (", not both" if self.query is not None else ""))
        return self

    def describe(self) -> str:
        return f"{self.url} table {self.table}" if self.table else f"{self.url} query"


def _parse_sql_url(text: str) -> Any:
    """The SQLAlchemy URL of `text`, or None if it is not one. SQLAlchemy is imported here, for import cost:
    only a recipe with `source: sql` pays for it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(text)
    except (ArgumentError, ValueError):
        return None


class ParquetDatasetData(DataConfig):
    """A folder (or prefix) of Parquet files, hive partitions allowed, local or at any fsspec URL."""

    source: Literal["parquet_dataset"] = Field(description="`parquet_dataset`: a folder of Parquet files.")
    path: str | None = Field(
        None, description="A folder or file-name prefix of Parquet files, relative to the project or any fsspec "
        "URL (s3://bucket/events/); hive partition folders (year=2024/month=01/) become columns.",
    )

    @model_validator(mode="after")
    def _has_path(self) -> ParquetDatasetData:
        if not self.path:
            raise ValueError("source=parquet_dataset needs `path`: a folder or prefix of Parquet files")
        return self

    def describe(self) -> str:
        return str(self.path)


class ImageSpec(_Strict):
    """What every image of an image source must be; a file outside these bounds fails validation by name."""

    channels: Literal[1, 3] = Field(3, description="Channels of every image: 1 (grey) or 3 (RGB); a file with "
                                    "another count (RGBA, or grey in an RGB set) fails validation.")
    min_size: Annotated[int, Field(ge=1, le=65_536)] = Field(
        4, description="Smallest height or width, in pixels, an image may have.")
    max_size: Annotated[int, Field(ge=1, le=65_536)] = Field(
        4096, description="Largest height or width, in pixels, an image may have.")

    @model_validator(mode="after")
    def _ordered(self) -> ImageSpec:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size={self.min_size} exceeds max_size={self.max_size}")
        return self


class ImageData(DataConfig):
    """What the image sources share: one row per image (its file name, its encoded bytes, its label), no
    feature columns; the image model decodes them to uint8 NHWC arrays (mlops/data/_images.py)."""

    target: str = Field("label", description="The label column of the rows an image source yields.")
    image: ImageSpec = ImageSpec()

    @model_validator(mode="after")
    def _coherent(self) -> ImageData:  # replaces DataConfig's: an image source has no feature columns
        if self.numeric or self.categorical:
            raise ValueError(f"source={self.source} yields images, not columns: leave out `numeric` and "
                             "`categorical`")
        return self

    @property
    def features(self) -> list[str]:
        return ["image"]

    @property
    def columns(self) -> list[str]:
        return ["file", "image", self.target]


class ImageFolderData(ImageData):
    """A folder with one subfolder per class of PNG/JPEG images, local or at any fsspec URL."""

    source: Literal["image_folder"] = Field(description="`image_folder`: one subfolder of images per class.")
    path: str = Field(description="The folder (relative to the project) or an fsspec URL; each subfolder's "
                      "name is the label of the images in it.")

    def describe(self) -> str:
        return self.path


class ImageTableData(ImageData):
    """A CSV or Parquet table naming one image file per row, with its label."""

    source: Literal["image_table"] = Field(description="`image_table`: a table of image paths and labels.")
    path: str = Field(description="The CSV or Parquet table (relative to the project) or an fsspec URL.")
    path_column: str = Field("path", description="The column of image paths, relative to the table's folder.")
    label_column: str = Field("label", description="The column of labels.")

    def describe(self) -> str:
        return self.path


class SklearnImagesData(ImageData):
    """An image dataset bundled with scikit-learn: `digits` (1,797 8x8 grey images of 0-9)."""

    source: Literal["sklearn_images"] = Field(description="`sklearn_images`: images bundled with scikit-learn.")
    dataset: Literal["digits"] = Field("digits", description="The scikit-learn image dataset.")

    def describe(self) -> str:
        return self.dataset


# ---------------------------------------------------------------- model
class EarlyStoppingConfig(_Strict):
    enabled: bool = True
    monitor: str = Field("val_loss", description="A logged validation metric: val_loss, val_acc, val_rmse.")
    mode: Literal["min", "max"] = "min"
    patience: Annotated[int, Field(ge=1, le=100_000)] = 5

    @field_validator("monitor")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in ("val_loss", "val_acc", "val_rmse", "val_mae"):
            raise ValueError("expected one of val_loss, val_acc (classification), val_rmse, val_mae (regression)")
        return v


class ModelConfig(_Strict):
    """What every model flavor shares: the task and how the Trainer runs. A model flavor subclasses it with
    `flavor: Literal["<name>"]` and its own hyperparameters."""

    # A flavor that trains a team's own LightningModule: the loader imports and checks it (read-only), and its
    # test metrics are whatever its `test_step` logs, so the gate's metric names are checked after evaluation.
    user_module: ClassVar[bool] = False

    flavor: str = Field("tabular_mlp", description="The model flavor: `tabular_mlp`, `lightning` (a team's own "
                        "LightningModule), or an installed plugin's.")
    task: Literal["classification", "regression"]
    batch_size: BatchSize = 64
    max_epochs: Annotated[int, Field(ge=1, le=100_000)] = 30
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    init_from: Literal["none", "champion"] = Field(
        "none", description="`champion`: start training from the champion's weights (a warm start on the new data "
        "window) instead of from scratch; with no champion yet it trains from scratch. The architecture (hidden "
        "sizes, feature columns, classes) must match the champion's, else training stops with exit 2.")

    @model_validator(mode="after")
    def _metric_fits_task(self) -> ModelConfig:
        es = self.early_stopping.monitor
        if self.task == "regression" and es == "val_acc":
            raise ValueError("early_stopping.monitor=val_acc needs task=classification; use val_loss or val_rmse")
        if self.task == "classification" and es in ("val_rmse", "val_mae"):
            raise ValueError(f"early_stopping.monitor={es} needs task=regression; use val_loss or val_acc")
        return self


class TabularMLPConfig(ModelConfig):
    """A tabular MLP, as a classifier or a regressor."""

    flavor: Literal["tabular_mlp"] = "tabular_mlp"
    hidden: list[LayerSize] = Field(default_factory=lambda: [64, 32], max_length=256,
                                    description="Hidden layer sizes.")
    dropout: float = Field(0.1, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0, description="Learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0)


IMPORT_PATH = r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$"


class LightningModelConfig(ModelConfig):
    """A team's own LightningModule, trained, gated, exported and served like the built-in MLP.

    ```yaml
    model:
      flavor: lightning
      module: acme_models.churn:ChurnNet        # importable from the project folder or an installed package
      init_args: {hidden: 128, dropout: 0.2}
      datamodule: acme_models.churn:ChurnData   # optional; default: the framework's (see mlops/training/_family.py)
      task: classification
    ```
    """

    user_module: ClassVar[bool] = True

    flavor: Literal["lightning"] = "lightning"
    module: str = Field(pattern=IMPORT_PATH, description="`package.module:Class`, a LightningModule subclass "
                        "importable from the project folder or an installed package.")
    init_args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of its constructor.")
    datamodule: str | None = Field(None, pattern=IMPORT_PATH, description="`package.module:Class`, a "
                                   "LightningDataModule built with the split's raw frames (train=, val=, test=, "
                                   "batch_size=); default: the framework's, which feeds preprocessed features.")


class AugmentConfig(_Strict):
    """Random changes to training images (train split only; plain torch, no torchvision)."""

    flip: bool = Field(False, description="Mirror images left-right at random (not for digits or text).")
    shift: Annotated[int, Field(ge=0, le=64)] = Field(
        0, description="Shift images by up to this many pixels each way (zero padding), at random.")


class ImageClassifierConfig(ModelConfig):
    """A built-in CNN over images. The served graph takes raw uint8 NHWC images of any height and width and
    resizes, scales and normalises them itself (mean and std of the train split), so a request is pixels."""

    flavor: Literal["image_classifier"] = "image_classifier"
    task: Literal["classification"] = "classification"
    image_size: Annotated[int, Field(ge=4, le=1024)] = Field(
        32, description="Images are resized (bilinear, inside the model) to image_size x image_size.")
    channels: LayerSize = Field(16, description="Convolution channels of the first block; each further block "
                                "doubles them.")
    depth: Annotated[int, Field(ge=1, le=8)] = Field(
        2, description="Convolution blocks (conv-batchnorm-relu, then a 2x2 max-pool while the image is >= 4).")
    dropout: float = Field(0.1, ge=0, lt=1)
    lr: float = Field(3e-3, gt=0, description="Learning rate (AdamW).")
    weight_decay: float = Field(1e-4, ge=0)
    augment: AugmentConfig = AugmentConfig()


# ---------------------------------------------------------------- compute
class ComputeConfig(_Strict):
    """Where Lightning trains: passed to the Trainer."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"
    num_nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"
    precision: Literal["32-true", "64-true", "16-mixed", "bf16-mixed"] = "32-true"
    deterministic: bool = Field(True, description="Bit-identical reruns (seed_everything + deterministic algorithms).")
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader workers.")

    @model_validator(mode="after")
    def _strategy_fits_accelerator(self) -> ComputeConfig:
        if self.strategy == "fsdp" and self.accelerator == "cpu":
            raise ValueError("strategy=fsdp shards the model over GPUs and cannot run on accelerator=cpu; on the CPU "
                             "use strategy=ddp (one process per compute.devices)")
        if self.strategy == "ddp_spawn":
            # Its children keep the fit's callbacks (history, best checkpoint) to themselves: mlops.training._ddp.
            raise ValueError("strategy=ddp_spawn trains in children that keep the training history and best "
                             "checkpoint to themselves; use strategy=ddp, for which mlops starts one fresh process "
                             "per device itself (as ddp_spawn would)")
        return self


# ---------------------------------------------------------------- maturity
LOWER_IS_BETTER = ("test_loss", "test_rmse", "test_mae")
GATE_METRICS = {"classification": ("test_acc", "test_f1", "test_auc", "test_loss"),
                "regression": ("test_rmse", "test_mae", "test_r2", "test_loss")}


class GateConfig(_Strict):
    """Level 3: when a trained candidate replaces the champion.

    ```yaml
    maturity:
      gate:
        metric: test_auc          # default: test_acc (classification), test_rmse (regression)
        min_improvement: 0.005    # over the champion, in the metric's direction
        floors: {test_acc: 0.9}   # absolute: the candidate must reach these whatever the champion does
    ```
    """

    metric: str | None = Field(None, description="Test metric compared with the champion's; default test_acc "
                               "(classification) or test_rmse (regression).")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Default: minimize for test_loss/test_rmse/test_mae, else maximize.")
    min_improvement: float = Field(0.0, ge=0, description="How much better than the champion the candidate must "
                                   "be (0: at least as good).")
    floors: dict[str, float] = Field(default_factory=dict, description="Metrics that must be at least this value, "
                                     "e.g. {test_acc: 0.9}.")
    ceilings: dict[str, float] = Field(default_factory=dict, description="Metrics that must be at most this "
                                       "value, e.g. {test_loss: 0.5}.")


class WatchdogConfig(_Strict):
    """Level 3+: the runner watches the model server and restarts it, with the champion, when it dies.

    ```yaml
    maturity:
      watchdog:
        poll_s: 1           # one health check a second; 2 misses in a row = down
        max_restarts: 5     # within window_s; then it gives up (mlops status says so) until the server answers again
    ```
    """

    enabled: bool = Field(True, description="Level 3+: restart a model server that died (off: `mlops up` does it).")
    poll_s: float = Field(1.0, gt=0, le=300, description="Seconds between two health checks of the model server.")
    misses: int = Field(2, ge=1, le=100, description="Failed health checks in a row before the server counts as down.")
    hung_s: float = Field(30.0, ge=0, le=3600, description="A server whose process runs but does not answer is "
                          "restarted only after this long (a busy server is not killed); one that is gone at once.")
    backoff_s: float = Field(1.0, ge=0, le=600, description="Wait before the second restart within window_s; it "
                             "doubles with each further one (the first restart is immediate).")
    max_backoff_s: float = Field(30.0, ge=0, le=3600, description="The longest wait between two restarts.")
    max_restarts: int = Field(5, ge=1, le=1000, description="Restarts within window_s before the watchdog gives up "
                              "(a crash loop); it re-arms once the server answers again, e.g. after `mlops up`.")
    window_s: float = Field(600.0, gt=0, le=DAY_S, description="The window max_restarts counts restarts in.")


class MaturityConfig(_Strict):
    """The level decides what is automated; the rest says how the automation behaves (conf/maturity/_base.yaml)."""

    level: int = Field(ge=0, le=4, description="Azure MLOps maturity level, 0 (manual) to 4 (drift-triggered retraining).")
    data_interval_s: float = Field(
        300, gt=0, le=31 * DAY_S,
        description="Level 1+: seconds between two looks at the data location (a Prefect interval schedule); "
        "new or changed data is ingested, validated and recorded as a dataset snapshot.")
    gate: GateConfig = GateConfig()
    watchdog: WatchdogConfig = WatchdogConfig()


# ---------------------------------------------------------------- tracking
class TrackerConfig(_Strict):
    """What every tracker flavor shares; a flavor subclasses it with `flavor: Literal["<name>"]`."""

    flavor: str = Field(description="The tracker flavor: `mlflow`, `neptune`, or an installed plugin's.")


class MlflowTracking(TrackerConfig):
    flavor: Literal["mlflow"]
    uri: str | None = Field(None, description="Tracking URI; default: sqlite under the state directory.")
    experiment: str = Field(description="Experiment name.")
    ui: bool = Field(False, description="Start the MLflow UI (`mlflow ui`, on 127.0.0.1) with `mlops up`; "
                     "`mlops down` stops it and `mlops status` prints its URL.")
    ui_port: int = Field(5000, ge=1, le=65535, description="The MLflow UI's port when `ui` is true.")


class NeptuneTracking(TrackerConfig):
    flavor: Literal["neptune"]
    mode: Literal["offline", "async", "sync", "debug"] = Field(
        "offline", description="`offline` writes locally; async/sync need a self-hosted server."
    )
    project: str = Field(description="workspace/project")
    api_token_env: str = Field(
        "NEPTUNE_API_TOKEN", description="Name of the environment variable holding the token (never the token)."
    )
    server_url_env: str = Field("NEPTUNE_SERVER_URL", description="Name of the environment variable with the server URL.")




# ---------------------------------------------------------------- serving
class ServerConfig(_Strict):
    """What every model-server flavor shares; a flavor subclasses it with `flavor: Literal["<name>"]`."""

    flavor: str = Field("triton", description="The model-server flavor: `triton`, or an installed plugin's.")
    model_name: str = Field(pattern=NAME_PATTERN, description="Name of the served model.")
    host: str = Field("127.0.0.1", description="Bind address; local services stay on loopback.")
    ready_timeout_s: TimeoutS = 120

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        try:
            ok = ipaddress.ip_address(v).is_loopback
        except ValueError:
            ok = v == "localhost"
        if not ok:
            raise ValueError("local services bind loopback only: use 127.0.0.1")
        return v


class ServingConfig(ServerConfig):
    """Triton: the local server and the generated model repository."""

    flavor: Literal["triton"] = "triton"
    http_port: Port = 8000
    grpc_port: Port = 8001
    metrics_port: Port = 8002
    max_batch_size: BatchSize = 256
    preferred_batch_sizes: list[BatchSize] = Field(default_factory=lambda: [16, 64], max_length=64)
    max_queue_delay_us: int = Field(0, ge=0, le=10_000_000,
                                    description="Dynamic batching: longest wait to fill a batch. 0 still "
                                    "batches the requests that queue while an instance is busy (bench/serving).")
    instance_count: Annotated[int, Field(ge=1, le=256)] = 1
    intra_op_threads: Annotated[int, Field(ge=1, le=1024)] = Field(
        2, description="onnxruntime threads per model instance.")

    @model_validator(mode="after")
    def _batching(self) -> ServingConfig:
        if len({self.http_port, self.grpc_port, self.metrics_port}) != 3:
            raise ValueError("http_port, grpc_port and metrics_port must differ")
        too_big = [b for b in self.preferred_batch_sizes if b > self.max_batch_size]
        if too_big:
            raise ValueError(f"preferred_batch_sizes {too_big} exceed max_batch_size={self.max_batch_size}")
        return self


# ---------------------------------------------------------------- monitoring
class DriftConfig(_Strict):
    """Per-column drift between a window of serving traffic and the training data's reference profile."""

    algorithm: Literal["hellinger"] = Field(
        "hellinger", description="Hellinger distance: stable on large windows, unlike KS p-values that flag "
        "unshifted data at 1M rows.")
    possible: float = Field(0.15, gt=0, lt=1, description="Score from which a column is POSSIBLE_DRIFT.")
    drift: float = Field(0.4, gt=0, le=1, description="Score from which a column is DRIFT (raises a drift event).")
    min_window_rows: Annotated[int, Field(ge=1, le=1_000_000_000)] = Field(
        200, description="Smaller windows get no verdict: too noisy to judge.")
    repeat_after_windows: Annotated[int, Field(ge=1, le=100_000)] = Field(
        10, description="Level 4: while drift lasts, mlops.drift.detected is emitted again after this many windows "
        "(a retraining the gate rejected, or a rollback, gets another chance); at most once per window span.")

    @model_validator(mode="after")
    def _ordered(self) -> DriftConfig:
        if self.possible >= self.drift:
            raise ValueError(f"possible={self.possible} must be below drift={self.drift}")
        return self


class MonitoringConfig(_Strict):
    """What every monitor (profiler) flavor shares; a flavor subclasses it with `flavor: Literal["<name>"]`."""

    flavor: str = Field(
        "whylogs", description="`whylogs`: a reference profile of the training data is stored with each version; "
        "`none`: no monitoring; or an installed plugin's."
    )
    sample_rate: float = Field(
        0.1, gt=0, le=1, description="Fraction of served rows profiled. Triton's model only draws the sample; a "
        "worker process profiles it at low priority (~48k rows/s for 10 columns here). At 12k rows/s, 0.1 keeps "
        "1.2k rows/s for drift, a few percent of a core.")
    window_s: float = Field(60, gt=0, le=DAY_S, description="Length of one serving-traffic profile window, in seconds.")
    drift: DriftConfig = DriftConfig()
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Physical bounds per numeric column, e.g. {age: [0, 120]}; a batch "
        "outside them is quarantined. Observed training ranges are not used: a real shift must not look like garbage.")
    allow_new_categories: bool = Field(
        False, description="Whether an ingested batch may contain categories never seen in training.")


class WhylogsMonitoring(MonitoringConfig):
    flavor: Literal["whylogs"] = "whylogs"


class NoMonitoring(MonitoringConfig):
    flavor: Literal["none"] = "none"


# ---------------------------------------------------------------- model store
class RegistryConfig(_Strict):
    """Where model versions are kept; a model-store flavor subclasses it with `flavor: Literal["<name>"]`."""

    flavor: str = Field("local", description="The model-store flavor: `local` (immutable versions under the "
                        "state directory), or an installed plugin's.")


class LocalRegistryConfig(RegistryConfig):
    flavor: Literal["local"] = "local"


# ---------------------------------------------------------------- target
class PrefectServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: Port = 4200
    start_timeout_s: TimeoutS = 120

    _loopback = field_validator("host")(ServerConfig._loopback.__func__)  # type: ignore[attr-defined]


class TargetConfig(_Strict):
    """What every target flavor shares; a flavor subclasses it with `kind: Literal["<name>"]`."""

    kind: str = Field(description="Where the recipe runs: `local` (this machine), `aws` (Pulumi), or a plugin's.")
    state_dir: str = Field(".mlops", description="Pid files, logs, registry, tracking data (relative to the project).")
    prefect: PrefectServerConfig = PrefectServerConfig()
    region: str | None = Field(None, description="AWS region (target=aws).")


class LocalTargetConfig(TargetConfig):
    kind: Literal["local"]


class AwsTargetConfig(TargetConfig):
    kind: Literal["aws"]


# ---------------------------------------------------------------- stack
class ComponentFlavors(_Strict):
    local: str
    aws: str
    k8s: str | None = Field(None, description="Flavor when the stack provisions on Kubernetes (stack=k8s).")


class NetworkParams(_Strict):
    """Create a VPC, or use an existing one (`vpc_id` with its subnets)."""

    vpc_id: str | None = Field(None, description="Existing VPC: create no network; needs `subnet_ids`.")
    subnet_ids: list[str] = Field(default_factory=list, description="Existing private subnets for compute.")
    public_subnet_ids: list[str] = Field(default_factory=list, description="Existing public subnets (public endpoint only).")
    cidr: str = Field("10.42.0.0/16", description="CIDR of the VPC created when `vpc_id` is not set.")

    @model_validator(mode="after")
    def _existing_needs_subnets(self) -> NetworkParams:
        if self.vpc_id and not self.subnet_ids:
            raise ValueError("an existing `vpc_id` needs its private `subnet_ids`")
        if not self.vpc_id and (self.subnet_ids or self.public_subnet_ids):
            raise ValueError("`subnet_ids` without `vpc_id`: name the VPC they belong to")
        return self


class ArtifactParams(_Strict):
    """The S3 artifact store: created (private, encrypted, versioned) or an existing bucket."""

    bucket: str | None = Field(None, description="Existing bucket: use it, create nothing (its policy stays yours).")
    kms_key_arn: str | None = Field(None, description="SSE-KMS key; default the AWS-managed `aws/s3` key.")
    profile_retention_days: Annotated[int, Field(ge=1, le=36_500)] = Field(
        90, description="whylogs profiles under profiles/ expire after this.")
    noncurrent_version_days: Annotated[int, Field(ge=1, le=36_500)] = Field(
        365, description="Old versions of replaced objects expire after this (model versions are never deleted)."
    )


class TrainingParams(_Strict):
    """AWS Batch GPU compute (or Kubernetes Jobs) for Lightning; devices and nodes come from `compute`."""

    instance_types: list[str] = Field(default_factory=lambda: ["g4dn.xlarge", "g5.xlarge"], min_length=1)
    max_vcpus: Annotated[int, Field(ge=1, le=100_000)] = Field(
        64, description="Upper bound of the Batch compute environment.")
    spot: bool = Field(True, description="Spot instances (single-node jobs; multi-node jobs use on-demand).")
    image: str | None = Field(None, description="Training image; default the stack's ECR repository, tag `latest`.")


class OrchestrationParams(_Strict):
    """The Prefect work pool's worker. The API URL and key are references, never values."""

    work_pool: str = Field("mlops", pattern=NAME_PATTERN)
    prefect_api_url_ref: str = Field(
        "mlops/prefect-api-url",
        description="Secrets Manager secret name/ARN (or `ssm:/path`) holding PREFECT_API_URL (Cloud or self-hosted).",
    )
    prefect_api_key_ref: str | None = Field(
        "mlops/prefect-api-key", description="Secret name/ARN (or `ssm:/path`) holding PREFECT_API_KEY; null: no key."
    )
    worker_image: str = "prefecthq/prefect:3.8.8-python3.11"
    worker_cpu: Annotated[int, Field(ge=1, le=16_384)] = 512  # ECS task CPU units: 16 vCPU at most
    worker_memory: Annotated[int, Field(ge=1, le=122_880)] = 1024  # MiB: Fargate's 120 GiB at most


class ServingParams(_Strict):
    """Triton on ECS GPU instances behind a load balancer, or a SageMaker endpoint with the Triton container."""

    mode: Literal["ecs", "sagemaker"] = "ecs"
    instance_type: str = Field("g4dn.xlarge", description="EC2 type (ecs) or SageMaker type, e.g. ml.g4dn.xlarge.")
    min_capacity: Annotated[int, Field(ge=1, le=1000)] = 1
    max_capacity: Annotated[int, Field(ge=1, le=1000)] = 4
    target_requests_per_instance: Count = Field(200, description="Autoscaling target (requests/minute/instance).")
    public: bool = Field(False, description="An internet-facing load balancer (needs `certificate_arn`: HTTPS only).")
    certificate_arn: str | None = None
    allowed_cidrs: list[str] = Field(
        default_factory=list, description="Who may call the endpoint; default the VPC's CIDR (or 0.0.0.0/0 when public)."
    )
    image: str = Field("nvcr.io/nvidia/tritonserver:24.09-py3", description="The stock Triton image (ecs, k8s).")
    sagemaker_image: str | None = Field(
        None, description="AWS's SageMaker Triton image URI for the region (mode=sagemaker)."
    )

    @model_validator(mode="after")
    def _bounds(self) -> ServingParams:
        if self.min_capacity > self.max_capacity:
            raise ValueError(f"min_capacity={self.min_capacity} exceeds max_capacity={self.max_capacity}")
        if self.public and self.mode == "ecs" and not self.certificate_arn:
            raise ValueError("a public endpoint is HTTPS only: set `certificate_arn` (an ACM certificate)")
        if self.mode == "sagemaker" and not self.instance_type.startswith("ml."):
            raise ValueError(f"mode=sagemaker needs a SageMaker instance type like ml.g4dn.xlarge, got {self.instance_type!r}")
        return self


class ScheduleParams(_Strict):
    data: str = Field("cron(0 2 * * ? *)", description="Level 1+: when fresh data is ingested and validated.")
    drift: str = Field("rate(1 day)", description="Level 4: when the drift deployment compares profiles.")


class MonitoringParams(_Strict):
    alarm_email: str | None = Field(None, description="Drift notifications go to this address (SNS subscription).")
    profile_prefix: str = Field("profiles/", pattern=r"^[a-z0-9_\-/]+/$")


class KubernetesParams(_Strict):
    namespace: str = Field("mlops", pattern=NAME_PATTERN)
    gpu_resource: str = Field("nvidia.com/gpu", description="The extended resource that requests a GPU.")
    prefect_secret_name: str = Field("prefect", description="Existing Secret with PREFECT_API_URL and PREFECT_API_KEY keys.")
    storage_secret_name: str = Field("mlops-s3", description="Existing Secret with the object-store credentials for Triton.")


class StackParameters(_Strict):
    """What a company overrides in its own YAML (`stack.parameters.*`), without copying the Pulumi code."""

    region: str | None = Field(None, description="AWS region; default `target.region`, then us-east-1.")
    name_prefix: str | None = Field(
        None, pattern=NAME_PATTERN, description="Prefix of every resource name; default `mlops-<name>`."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on every AWS resource (labels on Kubernetes).")
    network: NetworkParams = NetworkParams()
    artifacts: ArtifactParams = ArtifactParams()
    training: TrainingParams = TrainingParams()
    orchestration: OrchestrationParams = OrchestrationParams()
    serving: ServingParams = ServingParams()
    schedules: ScheduleParams = ScheduleParams()
    monitoring: MonitoringParams = MonitoringParams()
    kubernetes: KubernetesParams = KubernetesParams()


class StackConfig(_Strict):
    """Which flavor each component uses on each target, and the Pulumi project behind it."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str
    pulumi_project: str | None = Field(
        None, description="The registered Pulumi program (folder under infra/) that provisions this stack."
    )
    backend: str | None = Field(
        None, description="Pulumi state backend: s3://bucket/prefix (shared; `down` works from a fresh clone) or "
        "file://...; default file://<state_dir>/pulumi."
    )
    secrets_provider: str = Field(
        "passphrase", description="Pulumi secrets provider: passphrase (PULUMI_CONFIG_PASSPHRASE) or awskms://alias/..."
    )
    components: dict[Literal["storage", "orchestrator", "trainer", "server", "tracker", "monitor"], ComponentFlavors]
    parameters: StackParameters = StackParameters()


# ---------------------------------------------------------------- root
class ConfigBase(_Strict):
    """A recipe composed with its stack and the framework defaults. The flavor sections (data, model,
    tracking, serving, monitoring, registry, target) are added by :func:`config_class` from the registered
    flavors; use :data:`Config`."""

    @model_validator(mode="after")
    def _gate_metrics_exist(self) -> ConfigBase:
        if type(self.model).user_module:  # type: ignore[attr-defined]
            return self  # its metrics are what its test_step logs: checked after evaluation (steps.gate)
        known, gate = GATE_METRICS[self.model.task], self.maturity.gate  # type: ignore[attr-defined]
        named = [("maturity.gate.metric", gate.metric)] if gate.metric else []
        named += [(f"maturity.gate.floors.{k}", k) for k in gate.floors]
        named += [(f"maturity.gate.ceilings.{k}", k) for k in gate.ceilings]
        bad = [f"{where}: {m!r}" for where, m in named if m not in known]
        if bad:
            raise ValueError(f"unknown gate metric ({'; '.join(bad)}); task={self.model.task} evaluates "  # type: ignore[attr-defined]
                             + ", ".join(known))
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> ConfigBase:
        # Prefect and the model server run side by side on one machine (target=local): one port each.
        prefect = self.target.prefect.port  # type: ignore[attr-defined]
        serving = self.serving  # type: ignore[attr-defined]
        for name in type(serving).model_fields:
            if name.endswith("_port") and getattr(serving, name) == prefect:
                raise PydanticCustomError(
                    "port_clash", "is {port}, the same port as serving.{other}: Prefect and the model server each "
                    "need a port of their own", {"key": "target.prefect.port", "port": prefect,
                                                 "other": name})
        return self

    @model_validator(mode="after")
    def _level_4_monitors(self) -> ConfigBase:
        if self.maturity.level == 4 and self.monitoring.flavor == "none":  # type: ignore[attr-defined]
            raise ValueError("maturity 4 retrains on drift, which needs monitoring: set monitoring=whylogs "
                             "(or choose maturity=3)")
        return self

    @property
    def components(self) -> dict[str, str]:
        """Each component kind and the flavor this config chose for it (mlops.flavors): what runs."""
        from mlops.flavors import KINDS

        return {kind: getattr(getattr(self, section), KINDS[kind].key) for section, (kind, _b, _d) in SECTIONS.items()}

    @property
    def gate_metric(self) -> tuple[str, str]:
        """(metric, direction) the level-3 gate compares, defaults filled in."""
        gate = self.maturity.gate
        metric = gate.metric or ("test_acc" if self.model.task == "classification" else "test_rmse")  # type: ignore[attr-defined]
        return metric, gate.direction or ("minimize" if metric in LOWER_IS_BETTER else "maximize")


# The flavor sections: recipe key -> (flavor kind, the kind's base config, the flavor a section without the key gets).
SECTIONS: dict[str, tuple[str, type[_Strict], str | None]] = {
    "data": ("data_source", DataConfig, None),
    "model": ("model", ModelConfig, "tabular_mlp"),
    "tracking": ("tracker", TrackerConfig, None),
    "serving": ("server", ServerConfig, "triton"),
    "monitoring": ("monitor", MonitoringConfig, "whylogs"),
    "registry": ("model_store", RegistryConfig, "local"),
    "target": ("target", TargetConfig, None),
}


def _section_type(kind: str, base: type, default: str | None) -> Any:
    from mlops.flavors import KINDS, flavors

    key = KINDS[kind].key
    found = flavors(kind)
    bad = [f"{f.name} ({f.distribution})" for f in found.values() if not issubclass(f.config, base)]
    if bad:
        from mlops.errors import ConfigError, Problem

        raise ConfigError([Problem("", f"{kind} flavors {', '.join(bad)} have a config class that does not "
                                   f"subclass {base.__module__}.{base.__name__}", "",
                                   "derive the flavor's config from the kind's base config")])
    if not found:
        return base
    members = tuple(Annotated[f.config, Tag(name)] for name, f in sorted(found.items()))
    if len(members) == 1:
        return found[next(iter(found))].config

    def tag(value: Any) -> str | None:
        got = value.get(key, default) if isinstance(value, dict) else getattr(value, key, default)
        return got if isinstance(got, str) else None

    return Annotated[Union[members], Discriminator(tag, custom_error_type="unknown_flavor",  # noqa: UP007
                     custom_error_message=f"no {kind} flavor of that name is installed; installed: "
                     + ", ".join(sorted(found)), custom_error_context={"key": key})]


@functools.cache
def config_class() -> type[ConfigBase]:
    """The root Config, its flavor sections built from the registered flavors (mlops.flavors)."""
    sections = {name: (_section_type(kind, base, default), ...) for name, (kind, base, default) in SECTIONS.items()}
    sections["registry"] = (sections["registry"][0], Field(default_factory=LocalRegistryConfig))
    fields = {
        "name": (str, Field(pattern=NAME_PATTERN, description="Project/model name: lowercase letters, digits, _ "
                            "and -.")),
        "description": (str, ""),
        "seed": (Seed, Field(42, description="Seeds Lightning (weights, shuffling).")),
        "data": sections["data"],
        "model": sections["model"],
        "compute": (ComputeConfig, ...),
        "maturity": (MaturityConfig, ...),
        "tracking": sections["tracking"],
        "serving": sections["serving"],
        "monitoring": sections["monitoring"],
        "registry": sections["registry"],
        "target": sections["target"],
        "stack": (StackConfig, ...),
    }
    cls = create_model("Config", __base__=ConfigBase, __module__=__name__, __doc__=ConfigBase.__doc__.split(
        ". The flavor")[0] + ".", **fields)
    return cls


def __getattr__(name: str) -> Any:
    # `Config` is built on first use: the registry imports the flavors' config classes, which import this module.
    if name == "Config":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    class Config(ConfigBase):
        name: str
        description: str
        seed: int
        compute: ComputeConfig
        maturity: MaturityConfig
        stack: StackConfig
        data: DataConfig
        model: ModelConfig
        tracking: TrackerConfig
        serving: ServerConfig
        monitoring: MonitoringConfig
        registry: RegistryConfig
        target: TargetConfig


SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|access_key|private_key)$", re.I)
