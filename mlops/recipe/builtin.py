"""The built-in flavors. They register through the `mlops.flavors` entry points in pyproject.toml, exactly
as a third party's do; their Hydra defaults are the framework's own conf/<group>/<name>.yaml."""

from __future__ import annotations

from mlops.flavors import Flavor
from mlops.recipe import schema

SKLEARN = Flavor("data_source", "sklearn", schema.SklearnData, "mlops.data._source:SklearnSource",
                 description="A dataset bundled with scikit-learn.")
FILE = Flavor("data_source", "file", schema.FileData, "mlops.data._source:FileSource",
              description="One CSV or Parquet file, local or at any fsspec URL.")
SQL = Flavor("data_source", "sql", schema.SqlData, "mlops.data._sql:SqlSource",
             description="A query or table of a SQL database by SQLAlchemy URL; DuckDB embedded by default.")
PARQUET_DATASET = Flavor("data_source", "parquet_dataset", schema.ParquetDatasetData,
                         "mlops.data._dataset:ParquetDatasetSource",
                         description="A folder or prefix of Parquet files (hive partitions), local or fsspec.")
IMAGE_FOLDER = Flavor("data_source", "image_folder", schema.ImageFolderData, "mlops.data._images:ImageFolderSource",
                      description="A folder with one subfolder of PNG/JPEG images per class, local or fsspec.")
IMAGE_TABLE = Flavor("data_source", "image_table", schema.ImageTableData, "mlops.data._images:ImageTableSource",
                     description="A CSV or Parquet table of image paths (relative to it) and labels.")
SKLEARN_IMAGES = Flavor("data_source", "sklearn_images", schema.SklearnImagesData,
                        "mlops.data._images:SklearnImagesSource",
                        description="scikit-learn's bundled digits as 8x8 grey PNG images.")
TABULAR_MLP = Flavor("model", "tabular_mlp", schema.TabularMLPConfig, "mlops.training._module:TabularMLP",
                     description="An MLP over scaled numeric and one-hot categorical columns.")
LIGHTNING = Flavor("model", "lightning", schema.LightningModelConfig, "mlops.training._lightning:LightningFamily",
                   description="A team's own LightningModule (model.module), fed preprocessed features.")
IMAGE_CLASSIFIER = Flavor("model", "image_classifier", schema.ImageClassifierConfig,
                          "mlops.training._images:ImageClassifier",
                          description="A CNN over raw uint8 images; resizing and normalisation inside the graph.")
TRITON = Flavor("server", "triton", schema.ServingConfig, "mlops.serving._triton:TritonServer",
                description="NVIDIA Triton: python backend + onnxruntime here, onnxruntime_onnx in containers.")
MLFLOW = Flavor("tracker", "mlflow", schema.MlflowTracking, "mlops.tracking._mlflow:MlflowTracker",
                description="MLflow, sqlite under the state directory by default.",
                warm=("mlflow.store.tracking.sqlalchemy_store", "mlflow.tracing.processor.base_mlflow",
                      "sqlalchemy.dialects.sqlite"))
NEPTUNE = Flavor("tracker", "neptune", schema.NeptuneTracking, "mlops.tracking._neptune:NeptuneTracker",
                 description="The neptune client, offline or against a self-hosted server.")
WHYLOGS = Flavor("monitor", "whylogs", schema.WhylogsMonitoring, "mlops.monitoring._profiler:WhylogsProfiler",
                 description="whylogs profiles: reference, batch constraints, traffic windows, drift.",
                 warm=("mlops.monitoring._batch", "mlops.monitoring._fastlog", "whylogs.core.constraints.factories",
                       "whylogs.experimental.extras.embedding_metric"))
NO_MONITORING = Flavor("monitor", "none", schema.NoMonitoring, "mlops.monitoring._profiler:no_profiler",
                       description="No monitoring.")
LOCAL_REGISTRY = Flavor("model_store", "local", schema.LocalRegistryConfig, "mlops.registry._registry:Registry",
                        description="Immutable versions and aliases under the state directory.")
LOCAL = Flavor("target", "local", schema.LocalTargetConfig, "mlops.targets._local:LocalTarget",
               description="This machine: Prefect and the model server in the background.")
AWS = Flavor("target", "aws", schema.AwsTargetConfig, "mlops.targets._aws:AwsTarget",
             description="AWS through Pulumi's Automation API.")
